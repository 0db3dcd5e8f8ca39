//! A linearizability checker for histories of one register (one key): the
//! Wing–Gong search with Lowe's memoization of (operations linearized,
//! register value) configurations, as in Knossos and Porcupine.
//!
//! Each operation has the time it was invoked and the time its answer came
//! back. A write whose answer never came (a timeout, an `Unavailable`
//! after it was sent) may have taken effect at any time after its
//! invocation, or never: it is given no return time, and the search may
//! leave it out. Failed reads are not part of the history at all.
//!
//! The search linearizes, one at a time, an operation that no other
//! remaining operation precedes in real time (none returned before it was
//! invoked), applies it to the register, and backtracks when a read does
//! not match. The history is linearizable when every completed operation
//! has been placed.

use std::collections::HashSet;

/// What an operation did to the register.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Wrote this value.
    Write(u64),
    /// Read this value (`None`: the key was absent).
    Read(Option<u64>),
}

/// One operation of the history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    pub call_ns: u64,
    /// `None` for a write whose outcome is unknown.
    pub return_ns: Option<u64>,
    pub action: Action,
}

/// Why a history is not linearizable: how far the deepest search got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotLinearizable {
    /// Most completed operations any linearization attempt placed.
    pub placed_max: usize,
    pub completed: usize,
}

/// Checks a history of one register that starts absent. Gives up (as not
/// linearizable) only by failing; the search is exhaustive but memoized.
pub fn check(history: &[Operation]) -> Result<(), NotLinearizable> {
    let mut ops: Vec<&Operation> = history.iter().collect();
    ops.sort_by_key(|op| op.call_ns);
    let completed = ops.iter().filter(|op| op.return_ns.is_some()).count();
    let mut search = Search {
        ops: &ops,
        seen: HashSet::new(),
        placed_max: 0,
    };
    let mut linearized = vec![false; ops.len()];
    if search.run(&mut linearized, None, 0, completed) {
        Ok(())
    } else {
        Err(NotLinearizable {
            placed_max: search.placed_max,
            completed,
        })
    }
}

struct Search<'a> {
    ops: &'a [&'a Operation],
    /// Configurations already explored without success.
    seen: HashSet<(Vec<u64>, Option<u64>)>,
    placed_max: usize,
}

impl Search<'_> {
    fn run(
        &mut self,
        linearized: &mut [bool],
        value: Option<u64>,
        placed: usize,
        completed: usize,
    ) -> bool {
        self.placed_max = self.placed_max.max(placed);
        if placed == completed {
            return true;
        }
        let key = (bitset(linearized), value);
        if !self.seen.insert(key) {
            return false;
        }
        // An operation may go next only if it was invoked before every
        // remaining operation returned.
        let horizon = self
            .ops
            .iter()
            .zip(linearized.iter())
            .filter(|(_, done)| !**done)
            .filter_map(|(op, _)| op.return_ns)
            .min()
            .unwrap_or(u64::MAX);
        for i in 0..self.ops.len() {
            let op = self.ops[i];
            if linearized[i] {
                continue;
            }
            if op.call_ns > horizon {
                break; // sorted by invocation: no later one qualifies either
            }
            let next = match op.action {
                Action::Write(v) => Some(v),
                Action::Read(seen) if seen == value => value,
                Action::Read(_) => continue,
            };
            linearized[i] = true;
            let counted = usize::from(op.return_ns.is_some());
            if self.run(linearized, next, placed + counted, completed) {
                return true;
            }
            linearized[i] = false;
        }
        false
    }
}

fn bitset(flags: &[bool]) -> Vec<u64> {
    let mut words = vec![0u64; flags.len().div_ceil(64)];
    for (i, flag) in flags.iter().enumerate() {
        if *flag {
            words[i / 64] |= 1 << (i % 64);
        }
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(call: u64, ret: Option<u64>, action: Action) -> Operation {
        Operation {
            call_ns: call,
            return_ns: ret,
            action,
        }
    }

    #[test]
    fn sequential_reads_see_the_latest_write() {
        let history = [
            op(0, Some(1), Action::Write(1)),
            op(2, Some(3), Action::Read(Some(1))),
            op(4, Some(5), Action::Write(2)),
            op(6, Some(7), Action::Read(Some(2))),
        ];
        assert_eq!(check(&history), Ok(()));
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_caught() {
        let history = [
            op(0, Some(1), Action::Write(1)),
            op(2, Some(3), Action::Write(2)),
            op(4, Some(5), Action::Read(Some(1))),
        ];
        assert!(check(&history).is_err());
    }

    #[test]
    fn a_lost_acknowledged_write_is_caught() {
        let history = [
            op(0, Some(1), Action::Write(7)),
            op(2, Some(3), Action::Read(None)),
        ];
        assert!(check(&history).is_err());
    }

    #[test]
    fn concurrent_operations_may_take_either_order() {
        // The read overlaps the write: it may see the old or the new value.
        for seen in [None, Some(1)] {
            let history = [
                op(0, Some(10), Action::Write(1)),
                op(5, Some(6), Action::Read(seen)),
            ];
            assert_eq!(check(&history), Ok(()), "{seen:?}");
        }
        // But two sequential reads cannot go back in time.
        let history = [
            op(0, Some(10), Action::Write(1)),
            op(1, Some(2), Action::Read(Some(1))),
            op(3, Some(4), Action::Read(None)),
        ];
        assert!(check(&history).is_err());
    }

    #[test]
    fn a_write_of_unknown_outcome_may_apply_late_or_never() {
        let late = [
            op(0, None, Action::Write(5)),
            op(10, Some(11), Action::Read(None)),
            op(12, Some(13), Action::Read(Some(5))),
        ];
        assert_eq!(check(&late), Ok(()));
        let never = [
            op(0, None, Action::Write(5)),
            op(10, Some(11), Action::Read(None)),
        ];
        assert_eq!(check(&never), Ok(()));
        // Once seen, it cannot be unseen.
        let flicker = [
            op(0, None, Action::Write(5)),
            op(10, Some(11), Action::Read(Some(5))),
            op(12, Some(13), Action::Read(None)),
        ];
        assert!(check(&flicker).is_err());
    }

    #[test]
    fn many_concurrent_clients_check_quickly() {
        // 8 clients, 400 operations, each write read back by its writer.
        let mut history = Vec::new();
        let mut t = 0;
        for round in 0..50u64 {
            for client in 0..8u64 {
                let value = round * 8 + client;
                history.push(op(t + client, Some(t + 20 + client), Action::Write(value)));
            }
            t += 100;
            history.push(op(t, Some(t + 1), Action::Read(Some(round * 8 + 7))));
            t += 10;
        }
        // Reads at the end of each round must see the last write to
        // finish... any of the 8 concurrent ones: the checker must find the
        // order in which client 7's write came last.
        assert_eq!(check(&history), Ok(()));
    }
}
