//! Automatic tier moves (SPEC §10.2) at period boundaries in event time: once every
//! conversion taken in before a boundary is settled, each active partner's figures of
//! the period just ended choose its tier from the boundary on. Every instance makes the
//! moves itself before it settles anything past the boundary; moves are set once in the
//! state, so all instances pay under the same ones, and the `partner_tiers` rows and
//! webhook events they make again are the same rows and events.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};

use super::resolve::TierBook;
use super::store::{Answer, Mark, Read, TierKey, Write};
use super::{retry, Pipeline};
use crate::engine::tiers::{self, Figures, TierMove, TierRules};
use crate::registry::{Partner, PartnerStatus, Program};
use crate::shutdown::Shutdown;
use crate::sink::TierRow;

/// The moves made so far and, per program, the last boundary done in this process.
#[derive(Default)]
pub(super) struct Tiers {
    pub(super) book: TierBook,
    done: HashMap<String, i64>,
}

fn at_ms(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

impl Pipeline {
    /// Makes the moves of every boundary at or before `until` (and not after now) not
    /// made yet, for every program with `tier_rules`. Only a conversion about to be
    /// settled (`start`) starts a program's count: a bound computed before anything was
    /// read would skip the boundaries of a backlog. `None` when stopping first.
    pub(super) async fn move_tiers(
        &mut self,
        until: Mark,
        start: bool,
        shutdown: &Shutdown,
    ) -> Option<()> {
        let until = until.min(Mark::at(self.now().timestamp_millis()));
        for program in self.registry.programs() {
            let Some(rules) = &program.tier_rules else {
                continue;
            };
            let mut done = match self.tiers.done.get(&program.id) {
                Some(d) => *d,
                None if start => self.tier_start(&program, rules, until, shutdown).await?,
                None => continue,
            };
            loop {
                let boundary = rules.period.next(at_ms(done));
                if Mark::at(boundary.timestamp_millis()) > until
                    || boundary.timestamp_millis() <= done
                {
                    break;
                }
                self.boundary(&program, rules, boundary, shutdown).await?;
                done = boundary.timestamp_millis();
                self.tiers.done.insert(program.id.clone(), done);
            }
        }
        Some(())
    }

    /// The last boundary done for `program` as the state has it, with the moves made so
    /// far; a program seen for the first time starts at the period `until` falls in
    /// (nothing before it was counted).
    async fn tier_start(
        &mut self,
        program: &Program,
        rules: &TierRules,
        until: Mark,
        shutdown: &Shutdown,
    ) -> Option<i64> {
        let state = Arc::clone(&self.state);
        let partners = self.registry.partners_of(&program.id);
        let mut reads = vec![Read::TierDone {
            program: program.id.clone(),
        }];
        reads.extend(partners.iter().map(|p| Read::TierMoves {
            program: program.id.clone(),
            partner: p.id.clone(),
        }));
        let answers = retry(shutdown, || state.read(&reads)).await?;
        for (p, answer) in partners.iter().zip(&answers[1..]) {
            if let Answer::Entries(moves) = answer {
                for m in moves.iter().filter_map(|j| serde_json::from_str(j).ok()) {
                    self.tiers.book.record(&program.id, &p.id, m);
                }
            }
        }
        let done = match answers.first() {
            Some(Answer::Count(ms)) if *ms > 0 => *ms as i64,
            _ => {
                let start = rules.period.start(at_ms(until.ms)).timestamp_millis();
                let first = [Write::TierDone {
                    program: program.id.clone(),
                    boundary_ms: start,
                }];
                retry(shutdown, || state.write(&first)).await?;
                start
            }
        };
        self.tiers.done.insert(program.id.clone(), done);
        Some(done)
    }

    /// The moves of one boundary: set once in the state (a move another instance set
    /// first is the one kept), added to the book, their rows and events to the output;
    /// the boundary is marked done once they are written.
    async fn boundary(
        &mut self,
        program: &Program,
        rules: &TierRules,
        boundary: DateTime<Utc>,
        shutdown: &Shutdown,
    ) -> Option<()> {
        let state = Arc::clone(&self.state);
        let period = rules.period.key(rules.period.previous(boundary));
        let partners: Vec<Arc<Partner>> = self
            .registry
            .partners_of(&program.id)
            .into_iter()
            .filter(|p| p.status == PartnerStatus::Active)
            .collect();
        let reads: Vec<Read> = partners
            .iter()
            .map(|p| {
                Read::TierFigures(TierKey {
                    program: program.id.clone(),
                    partner: p.id.clone(),
                    period: period.clone(),
                })
            })
            .collect();
        let answers = retry(shutdown, || state.read(&reads)).await?;
        let moves: Vec<(String, TierMove)> = partners
            .iter()
            .zip(&answers)
            .filter_map(|(p, a)| {
                let m = self.move_of(program, rules, p, figures(a), boundary)?;
                Some((p.id.clone(), m))
            })
            .collect();
        let writes: Vec<Write> = moves
            .iter()
            .filter_map(|(partner, m)| {
                Some(Write::TierMove {
                    program: program.id.clone(),
                    partner: partner.clone(),
                    from_ms: boundary.timestamp_millis(),
                    json: serde_json::to_string(m).ok()?,
                })
            })
            .collect();
        let stood = retry(shutdown, || state.write(&writes)).await?;
        let mut rows = Vec::with_capacity(moves.len());
        for ((partner, mine), existing) in moves.into_iter().zip(stood) {
            let m = existing
                .and_then(|j| serde_json::from_str(&j).ok())
                .unwrap_or(mine);
            rows.push(TierRow::new(&program.id, &partner, &m, "auto"));
            self.tiers.book.record(&program.id, &partner, m);
        }
        metrics::counter!(crate::metrics::PIPELINE_TIER_MOVES_TOTAL).increment(rows.len() as u64);
        self.out.outbox.tier_moves(&self.registry, &rows);
        self.out.rows.tiers.extend(rows);
        self.out.after_write.push(Write::TierDone {
            program: program.id.clone(),
            boundary_ms: boundary.timestamp_millis(),
        });
        Some(())
    }

    /// The move `figures` make of the partner at `boundary`, if its tier changes: from
    /// the tier in force just before, to the rung earned (never down without `demote`).
    fn move_of(
        &self,
        program: &Program,
        rules: &TierRules,
        partner: &Partner,
        figures: Figures,
        boundary: DateTime<Utc>,
    ) -> Option<TierMove> {
        if partner.held_at(boundary).pinned {
            return None;
        }
        let before = boundary - chrono::Duration::milliseconds(1);
        let held = partner.held_at(before);
        let moved = self.tiers.book.latest(&program.id, &partner.id, before);
        let plan = &program.commission;
        let previous = tiers::in_force(held, moved)
            .filter(|t| plan.tiers.contains_key(*t))
            .unwrap_or(&plan.default_tier);
        let next = rules.next_tier(plan, previous, &figures);
        (next != previous).then(|| TierMove {
            from: boundary,
            tier: next.to_string(),
            previous: previous.to_string(),
            figures,
        })
    }
}

/// The figures of one period: the sum of what each conversion counted.
fn figures(answer: &Answer) -> Figures {
    match answer {
        Answer::Entries(entries) => entries
            .iter()
            .filter_map(|j| serde_json::from_str::<Figures>(j).ok())
            .fold(Figures::default(), Figures::plus),
        _ => Figures::default(),
    }
}
