//! A TCP proxy that takes a real service away from one component.

use super::*;

/// A TCP proxy that a test can switch off (dropping every connection and refusing new
/// ones) and on again, to take a real service away from one component only.
pub struct Proxy {
    pub addr: SocketAddr,
    up: Arc<std::sync::atomic::AtomicBool>,
    /// Connections are held open without a byte passing (see [`Proxy::freeze`]).
    frozen: Arc<std::sync::atomic::AtomicBool>,
    generation: Arc<std::sync::atomic::AtomicU64>,
}

impl Proxy {
    pub async fn start(target: &str) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let frozen = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let generation = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let target = target.to_string();
        let (up2, frozen2, gen2) = (
            Arc::clone(&up),
            Arc::clone(&frozen),
            Arc::clone(&generation),
        );
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let frozen = Arc::clone(&frozen2);
                // Held, silent, until the proxy thaws; then dropped.
                let hold = |socket: tokio::net::TcpStream| async move {
                    while frozen.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    drop(socket);
                };
                if frozen2.load(Ordering::SeqCst) {
                    tokio::spawn(hold(inbound));
                    continue;
                }
                if !up2.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                let gen = Arc::clone(&gen2);
                let born = gen.load(Ordering::SeqCst);
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    let copy = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
                    let cut = async {
                        while gen.load(Ordering::SeqCst) == born {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    };
                    tokio::select! { _ = copy => {}, _ = cut => {} }
                    hold(inbound).await;
                });
            }
        });
        Proxy {
            addr,
            up,
            frozen,
            generation,
        }
    }

    /// Stops every byte in both directions, open connections and new ones alike, without
    /// closing anything — a stopped server or a partition that drops packets — until
    /// [`Proxy::restore`], which closes what was held.
    pub fn freeze(&self) {
        use std::sync::atomic::Ordering;
        self.frozen.store(true, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Drops every open connection and refuses new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        use std::sync::atomic::Ordering;
        self.up.store(false, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    pub fn restore(&self) {
        self.frozen
            .store(false, std::sync::atomic::Ordering::SeqCst);
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
