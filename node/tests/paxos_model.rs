//! A model of Cairn's Multi-Paxos protocol with leader leases, checked
//! exhaustively with stateright for three replicas, bounded ballots and
//! slots (docs/replication.md, "The model").
//!
//! The model is the protocol, not the code: the simulation
//! (`paxos_sim.rs`) drives the real `paxos::Replica`; this checks the
//! design in every interleaving. Messages are a set that only grows, so
//! any message may be delivered late, twice, or never (loss, duplication,
//! reordering). Replicas crash and restart with their durable state only.
//!
//! Time is modelled by what the lease argument needs of it: a follower's
//! promise not to serve another candidate outlasts the leader's lease
//! built on it (the leader's lease is shrunk by twice the drift bound and
//! runs from its heartbeat's send time). So a follower may forget a grant
//! only once no leader's lease counts it; a restarted replica refuses every
//! candidate until the same holds.
//!
//! Checked, always: at most one value is chosen per slot; every
//! acknowledged write is chosen; a lease read sees every write acknowledged
//! before it. Sometimes (so the model is not vacuous): a write is
//! acknowledged; a lease read happens after a leader change.

use std::collections::BTreeSet;

use stateright::{Checker, Model, Property};

const REPLICAS: usize = 3;
const MAJORITY: usize = 2;
const SLOTS: usize = 2;

/// `(round, leader)`, ordered by round then leader; round 0 is "none".
#[derive(Clone, Copy, Debug, Default, Hash, PartialEq, Eq, PartialOrd, Ord)]
struct Ballot {
    round: u8,
    leader: u8,
}

type Accepted = [Option<(Ballot, u8)>; SLOTS];

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
enum Msg {
    Prepare(Ballot),
    Promise {
        from: u8,
        ballot: Ballot,
        accepted: Accepted,
    },
    Accept {
        ballot: Ballot,
        slot: u8,
        value: u8,
    },
    Accepted {
        from: u8,
        ballot: Ballot,
        slot: u8,
        value: u8,
    },
}

/// What a replica grants leases with: the leader it promised to serve
/// alone, or (after a restart) everyone, until the grant may lapse.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum Grant {
    None,
    To(u8),
    /// Restarted: it may have granted a lease it no longer remembers.
    Unknown,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Replica {
    // Durable.
    promised: Ballot,
    accepted: Accepted,
    // Volatile (lost at a crash).
    grant: Grant,
    /// The ballot it stands with (its promises count only for it).
    candidate: Option<Ballot>,
    leading: Option<Ballot>,
    /// The value this leader proposed for each slot in its ballot.
    proposed: [Option<u8>; SLOTS],
    /// The next slot for a new command, and the first slot of its term
    /// (slots below were taken over from earlier ballots).
    next_slot: u8,
    term_start: u8,
    /// Slots this leader knows chosen in its ballot.
    committed: [bool; SLOTS],
    /// Replicas whose lease grants this leader's lease counts.
    lease_from: BTreeSet<u8>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct State {
    replicas: Vec<Replica>,
    network: BTreeSet<Msg>,
    /// Writes acknowledged to clients: (slot, value).
    acknowledged: BTreeSet<(u8, u8)>,
    crashes: u8,
    stale_read: bool,
    lease_reads_after_change: bool,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
enum Action {
    StartElection(u8),
    HandlePrepare(u8, Ballot),
    TakeOver(u8),
    Propose(u8),
    HandleAccept(u8, Ballot, u8, u8),
    Acknowledge(u8, u8),
    GrantLease(u8, u8),
    LeaderLeaseLapses(u8),
    FollowerGrantLapses(u8),
    LeaseRead(u8),
    Crash(u8),
}

struct PaxosModel {
    /// Replicas `0..candidates` may stand for election (the rest only
    /// accept), and up to this round: bounds the state space.
    candidates: u8,
    rounds_max: u8,
    crashes_max: u8,
    /// The lease rule under test: a replica that granted a lease refuses
    /// other candidates. Turning it off must break lease reads.
    refuse_while_leased: bool,
}

/// A client command unique to the ballot that first proposed it.
fn fresh_value(ballot: Ballot, slot: usize) -> u8 {
    1 + ballot.round * 16 + ballot.leader * 4 + slot as u8
}

/// What a new leader puts in a hole.
const NOOP: u8 = 0;

impl PaxosModel {
    fn majority_of<'a>(senders: impl Iterator<Item = &'a u8>) -> bool {
        senders.collect::<BTreeSet<_>>().len() >= MAJORITY
    }

    fn chosen(state: &State, slot: u8) -> BTreeSet<u8> {
        let mut votes: std::collections::BTreeMap<(Ballot, u8), BTreeSet<u8>> = Default::default();
        for msg in &state.network {
            if let Msg::Accepted {
                from,
                ballot,
                slot: s,
                value,
            } = msg
                && *s == slot
            {
                votes.entry((*ballot, *value)).or_default().insert(*from);
            }
        }
        votes
            .into_iter()
            .filter(|(_, from)| from.len() >= MAJORITY)
            .map(|((_, value), _)| value)
            .collect()
    }

    /// Whether any leader's lease counts `r`'s grant.
    fn counted_by_a_lease(state: &State, r: u8) -> bool {
        state.replicas.iter().any(|l| l.lease_from.contains(&r))
    }
}

impl Model for PaxosModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let replica = Replica {
            promised: Ballot::default(),
            accepted: [None; SLOTS],
            grant: Grant::None,
            candidate: None,
            leading: None,
            proposed: [None; SLOTS],
            next_slot: 0,
            term_start: 0,
            committed: [false; SLOTS],
            lease_from: BTreeSet::new(),
        };
        vec![State {
            replicas: vec![replica; REPLICAS],
            network: BTreeSet::new(),
            acknowledged: BTreeSet::new(),
            crashes: 0,
            stale_read: false,
            lease_reads_after_change: false,
        }]
    }

    fn actions(&self, state: &State, actions: &mut Vec<Action>) {
        for r in 0..REPLICAS as u8 {
            let replica = &state.replicas[r as usize];
            // A follower stands only once its grant has lapsed: the election
            // timeout is longer than the lease.
            let free = matches!(replica.grant, Grant::None);
            if r < self.candidates
                && replica.leading.is_none()
                && free
                && replica.promised.round < self.rounds_max
            {
                actions.push(Action::StartElection(r));
            }
            for msg in &state.network {
                match msg {
                    Msg::Prepare(ballot) => actions.push(Action::HandlePrepare(r, *ballot)),
                    Msg::Accept {
                        ballot,
                        slot,
                        value,
                    } => actions.push(Action::HandleAccept(r, *ballot, *slot, *value)),
                    _ => {}
                }
            }
            if replica.leading.is_none() {
                actions.push(Action::TakeOver(r));
            }
            if replica.leading.is_some() {
                actions.push(Action::Propose(r));
                for slot in 0..SLOTS as u8 {
                    actions.push(Action::Acknowledge(r, slot));
                }
                for follower in 0..REPLICAS as u8 {
                    actions.push(Action::GrantLease(follower, r));
                }
                actions.push(Action::LeaseRead(r));
            }
            if !replica.lease_from.is_empty() {
                actions.push(Action::LeaderLeaseLapses(r));
            }
            if replica.grant != Grant::None {
                actions.push(Action::FollowerGrantLapses(r));
            }
            if state.crashes < self.crashes_max {
                actions.push(Action::Crash(r));
            }
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut state = last.clone();
        match action {
            Action::StartElection(r) => {
                // The candidate promises itself (durably) and asks the rest.
                let replica = &mut state.replicas[r as usize];
                let ballot = Ballot {
                    round: replica.promised.round + 1,
                    leader: r,
                };
                replica.promised = ballot;
                replica.candidate = Some(ballot);
                let accepted = replica.accepted;
                state.network.insert(Msg::Prepare(ballot));
                state.network.insert(Msg::Promise {
                    from: r,
                    ballot,
                    accepted,
                });
            }
            Action::HandlePrepare(a, ballot) => {
                let replica = &mut state.replicas[a as usize];
                let leased = match replica.grant {
                    Grant::None => false,
                    Grant::To(leader) => leader != ballot.leader,
                    Grant::Unknown => true,
                };
                if ballot <= replica.promised || (self.refuse_while_leased && leased) {
                    return None;
                }
                replica.promised = ballot;
                if replica.leading.is_some_and(|b| b < ballot) {
                    replica.leading = None;
                    replica.lease_from.clear();
                }
                let accepted = replica.accepted;
                state.network.insert(Msg::Promise {
                    from: a,
                    ballot,
                    accepted,
                });
            }
            Action::TakeOver(r) => {
                // Only the candidate of this very ballot: a restarted
                // replica has forgotten its candidacy and must stand anew.
                let ballot = state.replicas[r as usize].promised;
                if state.replicas[r as usize].candidate != Some(ballot) {
                    return None;
                }
                let promises: Vec<(u8, Accepted)> = state
                    .network
                    .iter()
                    .filter_map(|m| match m {
                        Msg::Promise {
                            from,
                            ballot: b,
                            accepted,
                        } if *b == ballot => Some((*from, *accepted)),
                        _ => None,
                    })
                    .collect();
                if !Self::majority_of(promises.iter().map(|(f, _)| f)) {
                    return None;
                }
                // Re-propose, for every slot up to the highest any promise
                // reports, the highest-ballot value, or a no-op for a hole.
                let top = (0..SLOTS)
                    .filter(|s| promises.iter().any(|(_, a)| a[*s].is_some()))
                    .max();
                let term_start = top.map_or(0, |t| t + 1);
                let replica = &mut state.replicas[r as usize];
                replica.leading = Some(ballot);
                replica.candidate = None;
                replica.committed = [false; SLOTS];
                replica.proposed = [None; SLOTS];
                replica.lease_from.clear();
                replica.next_slot = term_start as u8;
                replica.term_start = term_start as u8;
                for slot in 0..term_start {
                    let highest = promises
                        .iter()
                        .filter_map(|(_, accepted)| accepted[slot])
                        .max_by_key(|(b, _)| *b);
                    let value = highest.map_or(NOOP, |(_, v)| v);
                    replica.proposed[slot] = Some(value);
                    state.network.insert(Msg::Accept {
                        ballot,
                        slot: slot as u8,
                        value,
                    });
                }
            }
            Action::Propose(r) => {
                let replica = &mut state.replicas[r as usize];
                let ballot = replica.leading?;
                let slot = replica.next_slot as usize;
                if slot >= SLOTS {
                    return None;
                }
                let value = fresh_value(ballot, slot);
                replica.proposed[slot] = Some(value);
                replica.next_slot += 1;
                state.network.insert(Msg::Accept {
                    ballot,
                    slot: slot as u8,
                    value,
                });
            }
            Action::HandleAccept(a, ballot, slot, value) => {
                let replica = &mut state.replicas[a as usize];
                if ballot < replica.promised {
                    return None;
                }
                replica.promised = ballot;
                if replica.leading.is_some_and(|b| b < ballot) {
                    replica.leading = None;
                    replica.lease_from.clear();
                }
                if replica.accepted[slot as usize] == Some((ballot, value)) {
                    return None;
                }
                replica.accepted[slot as usize] = Some((ballot, value));
                state.network.insert(Msg::Accepted {
                    from: a,
                    ballot,
                    slot,
                    value,
                });
            }
            Action::Acknowledge(r, slot) => {
                let replica = &state.replicas[r as usize];
                let (ballot, value) = (replica.leading?, replica.proposed[slot as usize]?);
                if replica.committed[slot as usize] {
                    return None;
                }
                let voters = state.network.iter().filter_map(|m| match m {
                    Msg::Accepted {
                        from,
                        ballot: b,
                        slot: s,
                        value: v,
                    } if *b == ballot && *s == slot && *v == value => Some(from),
                    _ => None,
                });
                if !Self::majority_of(voters) {
                    return None;
                }
                state.replicas[r as usize].committed[slot as usize] = true;
                if value != NOOP {
                    state.acknowledged.insert((slot, value));
                }
            }
            Action::GrantLease(follower, leader) => {
                // A heartbeat from `leader`, answered: the follower grants,
                // the leader counts it (its lease runs from the send time).
                let ballot = state.replicas[leader as usize].leading?;
                let f = &mut state.replicas[follower as usize];
                if f.promised > ballot || f.grant == Grant::Unknown {
                    return None;
                }
                if follower != leader {
                    f.grant = Grant::To(leader);
                }
                let l = &mut state.replicas[leader as usize];
                if !l.lease_from.insert(follower) {
                    return None;
                }
            }
            Action::LeaderLeaseLapses(r) => {
                state.replicas[r as usize].lease_from.clear();
            }
            Action::FollowerGrantLapses(r) => {
                // Only once no leader's lease still counts this grant: the
                // follower's promise outlasts the lease built on it.
                if Self::counted_by_a_lease(&state, r) {
                    return None;
                }
                state.replicas[r as usize].grant = Grant::None;
            }
            Action::LeaseRead(r) => {
                let replica = &state.replicas[r as usize];
                let ballot = replica.leading?;
                let holds = Self::majority_of(replica.lease_from.iter().chain([&r]))
                    && replica.lease_from.iter().any(|f| *f != r);
                // Reads wait until the slots taken over are committed, and
                // see what this leader has committed.
                let caught_up = replica.committed[..replica.term_start as usize]
                    .iter()
                    .all(|c| *c);
                if !holds || !caught_up {
                    return None;
                }
                let sees: BTreeSet<(u8, u8)> = (0..SLOTS)
                    .filter(|s| replica.committed[*s])
                    .filter_map(|s| replica.proposed[s].map(|v| (s as u8, v)))
                    .collect();
                if !state.acknowledged.is_subset(&sees) {
                    state.stale_read = true;
                }
                if ballot.round > 1 {
                    state.lease_reads_after_change = true;
                }
            }
            Action::Crash(r) => {
                state.crashes += 1;
                let replica = &mut state.replicas[r as usize];
                replica.leading = None;
                replica.candidate = None;
                replica.proposed = [None; SLOTS];
                replica.next_slot = 0;
                replica.term_start = 0;
                replica.committed = [false; SLOTS];
                replica.lease_from.clear();
                replica.grant = Grant::Unknown;
            }
        }
        (state != *last).then_some(state)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        let lease_reads = Property::always("lease reads are linearizable", |_, state: &State| {
            !state.stale_read
        });
        if !self.refuse_while_leased {
            // The mutation: only the property it must break, so the search
            // ends at the first counterexample.
            return vec![lease_reads];
        }
        vec![
            Property::always("one value per slot", |_, state: &State| {
                (0..SLOTS as u8).all(|slot| Self::chosen(state, slot).len() <= 1)
            }),
            Property::always("acknowledged writes are chosen", |_, state: &State| {
                state
                    .acknowledged
                    .iter()
                    .all(|(slot, value)| Self::chosen(state, *slot).contains(value))
            }),
            lease_reads,
            Property::sometimes("a write is acknowledged", |_, state: &State| {
                !state.acknowledged.is_empty()
            }),
            Property::sometimes("a lease read after a leader change", |_, state: &State| {
                state.lease_reads_after_change
            }),
        ]
    }
}

/// Breadth first, so every behaviour up to the depth reached is covered;
/// the whole space of even this small configuration is too large for CI.
/// `CAIRN_MODEL_STATES` raises the bound.
const STATES_MAX: usize = 6_000_000;

#[test]
fn the_protocol_is_safe_in_every_interleaving() {
    let checker = PaxosModel {
        candidates: 3,
        rounds_max: 2,
        crashes_max: 1,
        refuse_while_leased: true,
    }
    .checker()
    .threads(2)
    .target_state_count(
        std::env::var("CAIRN_MODEL_STATES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(STATES_MAX),
    )
    .spawn_bfs()
    .join();
    eprintln!(
        "states checked: {} (every behaviour up to {} steps)",
        checker.unique_state_count(),
        checker.max_depth()
    );
    checker.assert_properties();
}

/// The lease rule is what keeps an old leader's reads fresh: without it,
/// a new leader is elected and acknowledges writes while the old lease
/// still holds, and the checker finds the stale read.
#[test]
fn without_the_lease_rule_a_stale_read_is_found() {
    let checker = PaxosModel {
        candidates: 2,
        rounds_max: 2,
        crashes_max: 0,
        refuse_while_leased: false,
    }
    .checker()
    .threads(2)
    .spawn_bfs()
    .join();
    let path = checker.assert_any_discovery("lease reads are linearizable");
    eprintln!("stale read after {} steps", path.into_actions().len());
}
