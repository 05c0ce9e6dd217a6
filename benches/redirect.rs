//! The redirect path in process (SPEC §8): registry lookups, click id, visitor cookie,
//! query merge, IP hash, event encoding and the enqueue onto the in-process bus, without
//! sockets. `cargo bench --bench redirect`

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hyper::Request;
use touchline::bus::memory::MemoryBus;
use touchline::bus::EventSource;
use touchline::config::Config;
use touchline::edge::Edge;
use touchline::registry::{Link, LinkStatus, MemoryStore, Program, Registry};

fn setup(rt: &tokio::runtime::Runtime) -> (Arc<Edge>, Arc<MemoryBus>) {
    rt.block_on(async {
        let registry = Registry::open(Arc::new(MemoryStore::new())).await.unwrap();
        let program: Program =
            serde_json::from_value(touchline::testkit::fixtures::program_json()).unwrap();
        registry.put_program("bench", program).await.unwrap();
        let partner = touchline::testkit::fixtures::partner("bench");
        registry.put_partner("p1", partner).await.unwrap();
        registry
            .create_link(Link {
                code: "bench-link".into(),
                program_id: "bench".into(),
                partner_id: "p1".into(),
                destination: "https://shop.example/landing?lang=en".into(),
                campaign: Some("spring".into()),
                utm_source: Some("p1".into()),
                utm_medium: Some("affiliate".into()),
                utm_campaign: None,
                utm_term: None,
                utm_content: None,
                sub_ids: Vec::new(),
                status: LinkStatus::Active,
            })
            .await
            .unwrap();
        let bus = MemoryBus::new(2_000_000);
        let edge = Arc::new(Edge::new(
            Config::embedded(),
            registry,
            bus.clone(),
            touchline::metrics::install(),
        ));
        (edge, bus)
    })
}

fn bench_redirect(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (edge, bus) = setup(&rt);
    let mut source = bus.source();
    let peer: SocketAddr = "203.0.113.9:50000".parse().unwrap();
    let request = Request::builder()
        .uri("/r/bench-link?utm_campaign=news&gclid=abc")
        .header(
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36",
        )
        .header("cookie", "tl_vid=0193a3b2-7c4e-4000-8000-000000000001")
        .header("referer", "https://blog.example/post")
        .body(())
        .unwrap();
    let mut g = c.benchmark_group("edge");
    g.throughput(Throughput::Elements(1));
    g.bench_function("redirect_in_process", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(500_000);
                let start = Instant::now();
                for _ in 0..n {
                    black_box(edge.redirect(&request, "bench-link", peer));
                }
                spent += start.elapsed();
                left -= n;
                // Drain outside the timing, so the bounded bus never overflows.
                rt.block_on(async {
                    while !source
                        .next_batch(1_000_000, Duration::ZERO)
                        .await
                        .unwrap()
                        .is_empty()
                    {}
                });
            }
            spent
        })
    });
    g.finish();
}

criterion_group!(benches, bench_redirect);
criterion_main!(benches);
