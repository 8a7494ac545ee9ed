//! When the planner runs and over which tables: planning follows change,
//! not size (issue 21). etcd watch events mark the tables whose state moved
//! ([`r2o_common::meta::Keys::touched`]); timers mark a table at the next
//! instant one of its windows can become ready (`bufferTimePeriod`, a
//! schedule's fire time, a FAILED task's retry) and the whole pool at the
//! next attempt deadline. A pass plans the marked tables only; an unchanged
//! cluster is not read at all. Pure: the planning loop feeds it events and
//! the clock and does the I/O.

use r2o_common::meta::Touched;
use std::collections::{BTreeMap, BTreeSet};

/// Which tables a planning pass covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pass {
    /// Every table (a new term, a watch that broke, a change every table
    /// reads, the safety net).
    All,
    /// These tables (raw names).
    Tables(BTreeSet<String>),
}

impl Pass {
    /// Whether the pass covers `raw`.
    pub fn covers(&self, raw: &str) -> bool {
        match self {
            Pass::All => true,
            Pass::Tables(t) => t.contains(raw),
        }
    }
}

/// Tables marked for the next pass and the timers that will mark them.
#[derive(Debug, Clone, Default)]
pub struct Wakeups {
    all: bool,
    dirty: BTreeSet<String>,
    /// raw table -> the earliest instant it must be planned again, UTC epoch ms.
    timers: BTreeMap<String, i64>,
    /// The earliest instant every table must be looked at again (attempt
    /// deadlines, which a pass checks for the whole pool), UTC epoch ms.
    global: Option<i64>,
}

impl Wakeups {
    /// Marks what a change of one key touched.
    pub fn touch(&mut self, t: Touched) {
        match t {
            Touched::Table(raw) => {
                if !self.all {
                    self.dirty.insert(raw);
                }
            }
            Touched::All => self.mark_all(),
            Touched::Nothing => {}
        }
    }

    /// Marks every table.
    pub fn mark_all(&mut self) {
        self.all = true;
        self.dirty.clear();
    }

    /// Plans `raw` again at `at_ms` (UTC epoch ms) at the latest; an earlier
    /// timer of the table is kept.
    pub fn table_at(&mut self, raw: &str, at_ms: i64) {
        let t = self.timers.entry(raw.to_string()).or_insert(at_ms);
        *t = (*t).min(at_ms);
    }

    /// Looks at every table again at `at_ms` at the latest.
    pub fn all_at(&mut self, at_ms: i64) {
        self.global = Some(self.global.map_or(at_ms, |g| g.min(at_ms)));
    }

    /// The earliest timer, UTC epoch ms (`None`: no timer set).
    pub fn next_due_ms(&self) -> Option<i64> {
        self.timers.values().copied().chain(self.global).min()
    }

    /// Whether anything is marked (or a timer is due at `now_ms`).
    pub fn pending(&self, now_ms: i64) -> bool {
        self.all || !self.dirty.is_empty() || self.next_due_ms().is_some_and(|t| t <= now_ms)
    }

    /// The pass to run at `now_ms`, if any: what is marked plus the tables
    /// whose timers are due; clears them (timers not yet due are kept).
    pub fn take(&mut self, now_ms: i64) -> Option<Pass> {
        let due: Vec<String> = self.timers.iter().filter(|(_, &t)| t <= now_ms).map(|(r, _)| r.clone()).collect();
        for raw in &due {
            self.timers.remove(raw);
        }
        if self.global.is_some_and(|g| g <= now_ms) {
            self.global = None;
            self.all = true;
        }
        if self.all {
            self.all = false;
            self.dirty.clear();
            // a full pass sets every table's timers again
            self.timers.clear();
            self.global = None;
            return Some(Pass::All);
        }
        self.dirty.extend(due);
        if self.dirty.is_empty() {
            return None;
        }
        for raw in &self.dirty {
            self.timers.remove(raw); // the pass sets it again if still needed
        }
        Some(Pass::Tables(std::mem::take(&mut self.dirty)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tables(names: &[&str]) -> Pass {
        Pass::Tables(names.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn nothing_marked_means_no_pass() {
        let mut w = Wakeups::default();
        assert_eq!(w.take(0), None);
        w.touch(Touched::Nothing);
        assert!(!w.pending(0));
        assert_eq!(w.take(0), None);
    }

    #[test]
    fn events_mark_their_tables_and_a_pool_change_marks_all() {
        let mut w = Wakeups::default();
        w.touch(Touched::Table("a".into()));
        w.touch(Touched::Table("b".into()));
        w.touch(Touched::Table("a".into()));
        assert_eq!(w.take(0), Some(tables(&["a", "b"])));
        assert_eq!(w.take(0), None, "taken once");
        w.touch(Touched::Table("a".into()));
        w.touch(Touched::All);
        w.touch(Touched::Table("c".into()));
        assert_eq!(w.take(0), Some(Pass::All));
        assert_eq!(w.take(0), None);
    }

    #[test]
    fn timers_fire_at_their_instant_and_not_before() {
        let mut w = Wakeups::default();
        w.table_at("a", 100);
        w.table_at("a", 50);
        w.table_at("b", 200);
        assert_eq!(w.next_due_ms(), Some(50), "the earlier timer of a table wins");
        assert!(!w.pending(49));
        assert_eq!(w.take(49), None);
        assert_eq!(w.take(50), Some(tables(&["a"])));
        assert_eq!(w.next_due_ms(), Some(200));
        // before 1970 is an ordinary instant
        w.table_at("c", -5);
        assert_eq!(w.take(0), Some(tables(&["c"])));
        w.all_at(150);
        assert_eq!(w.next_due_ms(), Some(150));
        assert_eq!(w.take(150), Some(Pass::All));
        assert_eq!(w.next_due_ms(), None, "a full pass sets every timer again");
    }

    #[test]
    fn a_marked_table_drops_its_timer_until_the_pass_sets_it_again() {
        let mut w = Wakeups::default();
        w.table_at("a", 500);
        w.touch(Touched::Table("a".into()));
        assert_eq!(w.take(0), Some(tables(&["a"])));
        assert_eq!(w.next_due_ms(), None);
        assert!(tables(&["a"]).covers("a") && !tables(&["a"]).covers("b") && Pass::All.covers("b"));
    }
}
