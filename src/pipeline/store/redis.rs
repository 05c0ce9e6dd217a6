//! Pipeline state in Redis, shared by every pipeline instance. Each call is one
//! pipelined round trip; the only script, `decide_clicks.lua`, touches the keys of one
//! fingerprint, which share a hash tag.

use std::collections::HashMap;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::Value;
use uuid::Uuid;

use super::{
    ms, Answer, ClickRecord, Decide, Mark, Read, StateError, StateStore, StoredTouch, Write,
    CLAIM_TTL, COUNT_TTL, MAX_JOURNEY, MEMO_TTL, ORDER_TTL,
};

const DECIDE_CLICKS: &str = include_str!("decide_clicks.lua");
/// Clicks decided per script call.
const DECIDE_CHUNK: usize = 500;

/// State in Redis.
pub struct RedisState {
    conn: ConnectionManager,
    prefix: String,
    decide: redis::Script,
}

impl RedisState {
    pub fn new(conn: ConnectionManager, prefix: &str) -> Self {
        RedisState {
            conn,
            prefix: prefix.to_string(),
            decide: redis::Script::new(DECIDE_CLICKS),
        }
    }

    fn click(&self, id: Uuid) -> String {
        format!("{}:c:{id}", self.prefix)
    }
    fn fingerprint(&self, fp: &str, part: &str) -> String {
        format!("{}:fp:{{{fp}}}:{part}", self.prefix)
    }
    fn journey(&self, program: &str, visitor: Uuid) -> String {
        format!("{}:j:{program}:{visitor}", self.prefix)
    }
    fn memo(&self, id: Uuid) -> String {
        format!("{}:m:{id}", self.prefix)
    }
    fn claim(&self, key: &str) -> String {
        format!("{}:d:{key}", self.prefix)
    }
    fn count(&self, program: &str, month: u32, partner: &str) -> String {
        format!("{}:v:{program}:{month}:{partner}", self.prefix)
    }
    fn first_sale(&self, program: &str, customer: &str) -> String {
        format!("{}:fs:{program}:{customer}", self.prefix)
    }
    fn order(&self, program: &str, order: &str) -> String {
        format!("{}:o:{{{program}:{order}}}", self.prefix)
    }
    fn refunds(&self, program: &str, order: &str) -> String {
        format!("{}:r", self.order(program, order))
    }
    fn frontiers_key(&self) -> String {
        format!("{}:wm", self.prefix)
    }

    async fn run(&self, pipe: &redis::Pipeline) -> Result<Vec<Value>, StateError> {
        Ok(pipe.query_async(&mut self.conn.clone()).await?)
    }
}

fn text(v: &Value) -> Result<Option<String>, StateError> {
    Ok(redis::from_redis_value_ref::<Option<String>>(v)?)
}

fn int(v: &Value) -> Result<u64, StateError> {
    Ok(redis::from_redis_value_ref::<u64>(v)?)
}

#[async_trait]
impl StateStore for RedisState {
    async fn record_clicks(&self, clicks: &[ClickRecord]) -> Result<(), StateError> {
        if clicks.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for c in clicks {
            pipe.cmd("SET")
                .arg(self.click(c.click_id))
                .arg(c.visitor_id.to_string())
                .arg("PX")
                .arg(ms(c.keep))
                .ignore();
            if let Some(cand) = &c.candidate {
                let key = self.fingerprint(&cand.fingerprint, "c");
                pipe.cmd("ZADD")
                    .arg(&key)
                    .arg("NX")
                    .arg(cand.mark.ms)
                    .arg(cand.mark.id_hex())
                    .ignore();
                pipe.cmd("PEXPIRE").arg(&key).arg(cand.keep_ms()).ignore();
            }
        }
        let _: () = pipe.query_async(&mut self.conn.clone()).await?;
        Ok(())
    }

    async fn decide_clicks(&self, clicks: &[Decide]) -> Result<Vec<bool>, StateError> {
        if clicks.is_empty() {
            return Ok(Vec::new());
        }
        // A few script calls in one round trip: thousands of decisions and journey
        // entries per call, yet none holding the server for long (other clients, other
        // instances, run between them).
        let mut pipe = redis::pipe();
        for chunk in clicks.chunks(DECIDE_CHUNK) {
            let cmd = pipe.cmd("EVALSHA");
            cmd.arg(self.decide.get_hash()).arg(chunk.len() * 4);
            for d in chunk {
                let fp = &d.candidate.fingerprint;
                cmd.arg(self.fingerprint(fp, "c"))
                    .arg(self.fingerprint(fp, "u"))
                    .arg(self.fingerprint(fp, "d"))
                    .arg(self.journey(&d.program_id, d.visitor_id));
            }
            cmd.arg(MAX_JOURNEY);
            for d in chunk {
                let c = &d.candidate;
                cmd.arg(c.mark.ms)
                    .arg(c.mark.id_hex())
                    .arg(c.window_ms)
                    .arg(c.keep_ms())
                    .arg(d.touch.member())
                    .arg(ms(d.keep));
            }
        }
        let mut conn = self.conn.clone();
        let answers: Vec<Vec<i64>> = match pipe.query_async(&mut conn).await {
            Ok(v) => v,
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                // The server lost its scripts (a restart): load and go again; deciding
                // twice is harmless.
                let _: String = redis::cmd("SCRIPT")
                    .arg("LOAD")
                    .arg(DECIDE_CLICKS)
                    .query_async(&mut conn)
                    .await?;
                pipe.query_async(&mut conn).await?
            }
            Err(e) => return Err(e.into()),
        };
        let verdicts: Vec<bool> = answers.into_iter().flatten().map(|v| v == 1).collect();
        if verdicts.len() != clicks.len() {
            return Err(StateError(format!(
                "the click script answered {} verdicts for {} clicks",
                verdicts.len(),
                clicks.len()
            )));
        }
        Ok(verdicts)
    }

    async fn memos(&self, ids: &[Uuid]) -> Result<Vec<Option<String>>, StateError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("GET").arg(self.memo(*id));
        }
        Ok(pipe.query_async(&mut self.conn.clone()).await?)
    }

    async fn read(&self, reads: &[Read]) -> Result<Vec<Answer>, StateError> {
        if reads.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for r in reads {
            match r {
                Read::ClickVisitor(click) => {
                    pipe.cmd("GET").arg(self.click(*click));
                }
                Read::Claim(key) => {
                    pipe.cmd("GET").arg(self.claim(key));
                }
                Read::Journey {
                    program,
                    visitor,
                    from_ms,
                    to_ms,
                } => {
                    pipe.cmd("ZRANGEBYSCORE")
                        .arg(self.journey(program, *visitor))
                        .arg(*from_ms)
                        .arg(*to_ms)
                        .arg("WITHSCORES");
                }
                Read::CountBefore {
                    program,
                    partner,
                    month,
                    before,
                } => {
                    let key = self.count(program, *month, partner);
                    pipe.cmd("ZCOUNT")
                        .arg(&key)
                        .arg("-inf")
                        .arg(format!("({}", before.ms));
                    pipe.cmd("ZRANGEBYSCORE")
                        .arg(&key)
                        .arg(before.ms)
                        .arg(before.ms);
                }
                Read::FirstSale {
                    program, customer, ..
                } => {
                    pipe.cmd("ZRANGE")
                        .arg(self.first_sale(program, customer))
                        .arg(0)
                        .arg(0)
                        .arg("WITHSCORES");
                }
                Read::Order { program, order } => {
                    pipe.cmd("GET").arg(self.order(program, order));
                    pipe.cmd("HGETALL").arg(self.refunds(program, order));
                }
            }
        }
        let replies = self.run(&pipe).await?;
        let mut replies = replies.iter();
        let mut next = || {
            replies
                .next()
                .ok_or_else(|| StateError("fewer replies than reads".into()))
        };
        let mut out = Vec::with_capacity(reads.len());
        for r in reads {
            out.push(match r {
                Read::ClickVisitor(_) | Read::Claim(_) => Answer::Text(text(next()?)?),
                Read::Journey { .. } => {
                    let raw: Vec<(String, f64)> = redis::from_redis_value_ref(next()?)?;
                    // Scores are integer milliseconds, well inside f64's exact range.
                    Answer::Touches(
                        raw.iter()
                            .filter_map(|(m, s)| StoredTouch::parse(m, *s as i64))
                            .collect(),
                    )
                }
                Read::CountBefore { before, .. } => {
                    let earlier = int(next()?)?;
                    let same_ms: Vec<String> = redis::from_redis_value_ref(next()?)?;
                    let id = before.id_hex();
                    Answer::Count(earlier + same_ms.iter().filter(|m| **m < id).count() as u64)
                }
                Read::FirstSale { before, .. } => {
                    let first: Vec<(String, f64)> = redis::from_redis_value_ref(next()?)?;
                    Answer::Marked(first.into_iter().find_map(|(member, score)| {
                        let (id, json) = member.split_at_checked(32)?;
                        let mark = Mark {
                            ms: score as i64,
                            id: u128::from_str_radix(id, 16).ok()?,
                        };
                        (mark < *before).then(|| (mark, json.to_string()))
                    }))
                }
                Read::Order { .. } => {
                    let record = text(next()?)?;
                    let raw: Vec<(String, String)> = redis::from_redis_value_ref(next()?)?;
                    let mut refunds: Vec<(Mark, String)> = raw
                        .into_iter()
                        .filter_map(|(m, j)| Some((Mark::decode(&m)?, j)))
                        .collect();
                    refunds.sort();
                    Answer::Order { record, refunds }
                }
            });
        }
        Ok(out)
    }

    async fn write(&self, writes: &[Write]) -> Result<Vec<Option<String>>, StateError> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for w in writes {
            match w {
                Write::Memo {
                    conversion_id,
                    json,
                } => {
                    // Set once; the reply is what was there before (Redis ≥ 7.0).
                    pipe.cmd("SET")
                        .arg(self.memo(*conversion_id))
                        .arg(json)
                        .arg("NX")
                        .arg("GET")
                        .arg("PX")
                        .arg(ms(MEMO_TTL));
                }
                Write::Claim { key, holder } => {
                    pipe.cmd("SET")
                        .arg(self.claim(key))
                        .arg(holder)
                        .arg("NX")
                        .arg("PX")
                        .arg(ms(CLAIM_TTL))
                        .ignore();
                }
                Write::Count {
                    program,
                    partner,
                    month,
                    mark,
                } => {
                    let key = self.count(program, *month, partner);
                    pipe.cmd("ZADD")
                        .arg(&key)
                        .arg("NX")
                        .arg(mark.ms)
                        .arg(mark.id_hex())
                        .ignore();
                    pipe.cmd("PEXPIRE").arg(&key).arg(ms(COUNT_TTL)).ignore();
                }
                Write::FirstSale {
                    program,
                    customer,
                    mark,
                    json,
                    ttl,
                } => {
                    let key = self.first_sale(program, customer);
                    pipe.cmd("ZADD")
                        .arg(&key)
                        .arg("NX")
                        .arg(mark.ms)
                        .arg(format!("{}{json}", mark.id_hex()))
                        .ignore();
                    match ttl {
                        Some(t) => pipe.cmd("PEXPIRE").arg(&key).arg(ms(*t)).ignore(),
                        // A lifetime plan follows the first sale for good.
                        None => pipe.cmd("PERSIST").arg(&key).ignore(),
                    };
                }
                Write::Order {
                    program,
                    order,
                    json,
                } => {
                    pipe.cmd("SET")
                        .arg(self.order(program, order))
                        .arg(json)
                        .arg("NX")
                        .arg("PX")
                        .arg(ms(ORDER_TTL))
                        .ignore();
                }
                Write::Refund {
                    program,
                    order,
                    mark,
                    json,
                } => {
                    let key = self.refunds(program, order);
                    pipe.cmd("HSET")
                        .arg(&key)
                        .arg(mark.encode())
                        .arg(json)
                        .ignore();
                    pipe.cmd("PEXPIRE").arg(&key).arg(ms(ORDER_TTL)).ignore();
                }
            }
        }
        let replies = self.run(&pipe).await?;
        // Only memo writes reply (the rest are ignored), in order.
        let mut replies = replies.iter();
        let mut out = Vec::with_capacity(writes.len());
        for w in writes {
            out.push(match w {
                Write::Memo { .. } => text(
                    replies
                        .next()
                        .ok_or_else(|| StateError("fewer replies than memo writes".into()))?,
                )?,
                _ => None,
            });
        }
        Ok(out)
    }

    async fn frontiers(&self) -> Result<HashMap<String, Mark>, StateError> {
        let raw: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.frontiers_key())
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(raw
            .into_iter()
            .filter_map(|(k, v)| Some((k, Mark::decode(&v)?)))
            .collect())
    }

    async fn publish(&self, frontiers: &[(String, Mark)]) -> Result<(), StateError> {
        if frontiers.is_empty() {
            return Ok(());
        }
        let mut cmd = redis::cmd("HSET");
        cmd.arg(self.frontiers_key());
        for (k, m) in frontiers {
            cmd.arg(k).arg(m.encode());
        }
        let _: u64 = cmd.query_async(&mut self.conn.clone()).await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StateError> {
        let _: String = redis::cmd("PING")
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }
}
