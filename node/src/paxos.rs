//! A Multi-Paxos replica as a pure state machine (docs/replication.md).
//!
//! No IO, no clock, no randomness of its own: the driver feeds messages
//! ([`Replica::handle`]), time ([`Replica::tick`]) and client proposals
//! ([`Replica::propose`]), and drains [`Ready`]. A `Ready` keeps durability
//! order explicit in its types:
//! - `persist`: state to make durable (promises, accepted values);
//! - `send`: messages that may go at once;
//! - `send_after_persist`: messages that promise something about durable
//!   state (Promise, Accepted), released only once `persist` is durable;
//! - `committed`: values chosen, in slot order, to apply.
//!
//! After making a `Ready`'s `persist` durable the driver calls
//! [`Replica::persisted`] with it. That is also when a leader counts its own
//! vote, so a value is chosen only once a majority holds it durably.
//!
//! The protocol: ballots `(round, replica)`; a candidate runs phase 1
//! (Prepare/Promise) for every slot from its commit point on, re-proposes
//! the highest-ballot value it learns for each slot (a no-op for holes),
//! then, as a stable leader, runs only phase 2 (Accept/Accepted) for new
//! slots. The leader's heartbeats carry its ballot and commit point;
//! followers answer with how far they have applied, and the leader resends
//! what they miss.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

pub type ReplicaId = usize;
pub type Slot = u64;

/// A proposal number; higher ballots win. Ordered by round, then replica.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct Ballot {
    pub round: u64,
    pub leader: ReplicaId,
}

/// What a slot holds.
#[derive(Clone, Debug, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Value {
    /// Fills a slot a new leader found empty.
    Noop,
    Command(Vec<u8>),
    /// The group's members from the next slot on.
    Reconfigure(Membership),
}

/// One member of a group.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct Member {
    pub id: ReplicaId,
    /// A log replica: it accepts values and counts in every quorum, but
    /// holds no state machine, so it never stands for leader.
    pub log_only: bool,
}

/// The members of a group, which decide its quorums: a majority of them.
/// The membership of slot `s` is the one the last `Reconfigure` chosen
/// below `s` names (the group's first one below that).
#[derive(Clone, Debug, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Membership {
    /// By id, each once.
    members: Vec<Member>,
    /// Opaque to the core: what the driver needs to reach the members
    /// (the node puts its encoded `GroupSpec` here), chosen with them.
    pub context: Vec<u8>,
}

/// Why a membership cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// Log replicas stand in for a minority: a majority of members
    /// must hold a state machine, so some full member can always be
    /// elected by the others.
    #[error("full members must be a majority of the group")]
    TooFewFullMembers,
    #[error("replica {0} is named twice")]
    Duplicate(ReplicaId),
}

impl Membership {
    /// Checks and sorts `members`.
    pub fn new(mut members: Vec<Member>) -> Result<Membership, MembershipError> {
        members.sort_unstable_by_key(|m| m.id);
        if let Some(pair) = members.windows(2).find(|pair| pair[0].id == pair[1].id) {
            return Err(MembershipError::Duplicate(pair[0].id));
        }
        let full = members.iter().filter(|m| !m.log_only).count();
        if full * 2 <= members.len() {
            return Err(MembershipError::TooFewFullMembers);
        }
        Ok(Membership {
            members,
            context: Vec::new(),
        })
    }

    /// The same members, with `context` for the driver.
    pub fn with_context(mut self, context: Vec<u8>) -> Membership {
        self.context = context;
        self
    }

    /// Full members with these ids (at least one).
    pub fn full(ids: impl IntoIterator<Item = ReplicaId>) -> Result<Membership, MembershipError> {
        Membership::new(
            ids.into_iter()
                .map(|id| Member {
                    id,
                    log_only: false,
                })
                .collect(),
        )
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    pub fn ids(&self) -> impl Iterator<Item = ReplicaId> + '_ {
        self.members.iter().map(|m| m.id)
    }

    pub fn contains(&self, id: ReplicaId) -> bool {
        self.members.iter().any(|m| m.id == id)
    }

    /// Whether `id` may lead: a member that holds a state machine.
    pub fn is_full_member(&self, id: ReplicaId) -> bool {
        self.members.iter().any(|m| m.id == id && !m.log_only)
    }

    /// Whether `voters` include a majority of the members. Voters that
    /// are not members do not count. (Counted without trusting the order
    /// of `members`: a membership may come off the network.)
    pub fn is_quorum<'a>(&self, voters: impl IntoIterator<Item = &'a ReplicaId>) -> bool {
        let counted = voters.into_iter().filter(|v| self.contains(**v)).count();
        counted > self.members.len() / 2
    }

    fn majority(&self) -> usize {
        self.members.len() / 2 + 1
    }
}

#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Message {
    Prepare {
        ballot: Ballot,
        from_slot: Slot,
    },
    /// `log_start`: the promiser's first slot held; it reports values
    /// from there (or from the candidate's `from_slot`) on, so its promise
    /// counts only for memberships in force from that slot.
    Promise {
        ballot: Ballot,
        log_start: Slot,
        accepted: Vec<(Slot, Ballot, Value)>,
    },
    Accept {
        ballot: Ballot,
        slot: Slot,
        value: Value,
    },
    Accepted {
        ballot: Ballot,
        slot: Slot,
    },
    /// The sender has promised a higher ballot.
    Reject {
        promised: Ballot,
    },
    /// `seq` numbers the leader's heartbeats; the reply echoes it, so the
    /// leader knows from when an acknowledgement holds (leases).
    /// `log_floor`: every full member has checkpointed every slot below
    /// (what a log replica may drop, [`Replica::log_floor`]).
    Heartbeat {
        ballot: Ballot,
        commit_through: Slot,
        seq: u64,
        log_floor: Slot,
    },
    /// Would you promise `ballot` to a candidate whose commit point is
    /// `from_slot`? Asked before an election; changes no state, so a
    /// replica cut off from a healthy leader cannot disrupt it.
    PreVote {
        ballot: Ballot,
        from_slot: Slot,
    },
    /// `promised`: the replier's promise, so a refused pre-candidate can
    /// stand above it next time.
    PreVoteReply {
        ballot: Ballot,
        granted: bool,
        promised: Ballot,
    },
    /// `checkpointed_through`: the replier's state machine is durable
    /// through that slot ([`Replica::checkpointed`]).
    HeartbeatReply {
        ballot: Ballot,
        applied_through: Slot,
        seq: u64,
        checkpointed_through: Slot,
        /// The first slot whose value the replier still holds.
        log_start: Slot,
    },
    /// The sender hears no leader and may not stand (it knows no
    /// membership it is a full member of: a new member that lagged below
    /// the change that added it, say); its commit point is `from_slot`. A
    /// replica that knows a longer chosen prefix, and no leader either,
    /// sends it a snapshot (`help_lagging`).
    CatchUp {
        from_slot: Slot,
    },
}

/// State that must be durable before dependent messages go out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Persist {
    Promise(Ballot),
    Accept {
        slot: Slot,
        ballot: Ballot,
        value: Value,
    },
}

/// Outputs of the replica since the last drain.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Ready {
    pub persist: Vec<Persist>,
    pub send: Vec<(ReplicaId, Message)>,
    pub send_after_persist: Vec<(ReplicaId, Message)>,
    /// Newly chosen values in slot order, from the first not yet reported.
    pub committed: Vec<(Slot, Value)>,
    /// Leader: peers that lag below the first value it still holds. Log
    /// shipping cannot catch them up; the driver sends them a snapshot of
    /// its state machine, which they install with [`Replica::installed`].
    /// A peer reappears here on each of its heartbeat replies until then.
    /// Also, from any replica with a state machine and no leader, a
    /// replica that stands from below its log or asks to be caught up
    /// (`help_lagging`).
    pub snapshots: Vec<ReplicaId>,
    /// Leader: log replicas, joining or lagging below the floor, each
    /// with the slot to start at: they hold no state machine, so the
    /// driver tells them every slot below is chosen (they take it with
    /// [`Replica::started_log`]), and the log from there follows.
    pub log_starts: Vec<(ReplicaId, Slot)>,
}

impl Ready {
    pub fn is_empty(&self) -> bool {
        self.persist.is_empty()
            && self.send.is_empty()
            && self.send_after_persist.is_empty()
            && self.committed.is_empty()
            && self.snapshots.is_empty()
            && self.log_starts.is_empty()
    }
}

/// What a replica keeps across crashes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DurableState {
    pub promised: Ballot,
    pub accepted: BTreeMap<Slot, (Ballot, Value)>,
}

impl DurableState {
    pub fn apply(&mut self, persist: &Persist) {
        match persist {
            Persist::Promise(ballot) => self.promised = self.promised.max(*ballot),
            Persist::Accept {
                slot,
                ballot,
                value,
            } => {
                let newer = self.accepted.get(slot).is_none_or(|(b, _)| b <= ballot);
                if newer {
                    self.accepted.insert(*slot, (*ballot, value.clone()));
                }
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub id: ReplicaId,
    pub heartbeat_interval: Duration,
    /// How long an acknowledged heartbeat lets the leader serve reads
    /// alone; a follower refuses other candidates for as long. Must be
    /// shorter than the election timeout.
    pub lease_duration: Duration,
    /// Most any two clocks' rates may differ (0.05 = 5 %); leases shrink by
    /// twice this on the leader's side.
    pub clock_drift_max: f64,
    /// Base election timeout; each wait adds up to as much again (jitter).
    pub election_timeout: Duration,
    /// Seeds the election jitter.
    pub seed: u64,
}

/// Proposals refused because this replica is not the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not the leader (try {hint:?})")]
pub struct NotLeader {
    pub hint: Option<ReplicaId>,
}

/// Why a membership change was not proposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReconfigureError {
    #[error(transparent)]
    NotLeader(#[from] NotLeader),
    /// One change at a time: the last one is not chosen yet (retry).
    #[error("a membership change is already in progress")]
    InProgress,
    /// The leader would remove or demote itself; move leadership first.
    #[error("the leader must stay a full member")]
    RemovesLeader,
    /// A new member has not caught up as a learner yet ([`Replica::add_learner`]);
    /// retry once it has.
    #[error("new member {0} has not caught up with the group yet")]
    NotCaughtUp(ReplicaId),
}

/// How far below the leader's commit point a learner may be and still
/// join: the values it lacks then are few, and it gets them as a member
/// right after.
pub const JOIN_LAG_MAX: u64 = 64;

#[derive(Debug)]
enum Role {
    Follower,
    /// Asking peers whether an election would succeed.
    PreCandidate {
        ballot: Ballot,
        grants: BTreeSet<ReplicaId>,
    },
    Candidate {
        ballot: Ballot,
        from_slot: Slot,
        promises: BTreeMap<ReplicaId, Promised>,
        /// Replicas sent a Prepare: the members of the membership at
        /// `from_slot`, then those of every membership the promises name.
        asked: BTreeSet<ReplicaId>,
    },
    Leader {
        ballot: Ballot,
        next_slot: Slot,
        votes: BTreeMap<Slot, BTreeSet<ReplicaId>>,
        /// Memberships this leader proposed (or took over) at slots not
        /// yet chosen, keyed by the first slot they govern.
        planned: BTreeMap<Slot, Membership>,
        /// Replicas about to join, caught up before they do.
        learners: BTreeMap<ReplicaId, Learner>,
    },
}

/// A promise a candidate holds: its sender's log's first slot, and the
/// values the sender holds from there or the candidate's commit point on.
type Promised = (Slot, Vec<(Slot, Ballot, Value)>);

/// A replica a leader catches up before it joins.
#[derive(Debug, Clone, Copy, Default)]
struct Learner {
    /// It joins as a log replica: it needs the log from the full
    /// members' floor up, not a state machine.
    log_only: bool,
    /// The member it is to replace, whose checkpoint its log start
    /// need not cover.
    replaces: Option<ReplicaId>,
    /// What it last reported: applied through, its first slot held, and
    /// checkpointed through.
    reported: Option<(Slot, Slot, Slot)>,
}

#[derive(Debug)]
pub struct Replica {
    config: Config,
    /// Includes changes not yet durable; the driver persists them via Ready.
    state: DurableState,
    role: Role,
    /// Every slot below is known chosen (this replica has its value, or
    /// has applied it and compacted it away).
    commit_through: Slot,
    /// Values of slots below were dropped from memory ([`Replica::compact`]):
    /// this replica can neither report them in a Promise nor resend them.
    log_start: Slot,
    /// Slots below were reported in `Ready::committed`.
    reported_through: Slot,
    /// Memberships by the first slot they govern, as chosen values (or
    /// the one this replica started from) decide them. Empty for a
    /// replica that joined a group and has not learned its membership.
    configs: BTreeMap<Slot, Membership>,
    /// The leader's ballot and commit point, as last heard.
    leader: Option<(Ballot, Slot)>,
    election_deadline: Option<Instant>,
    last_heartbeat: Option<Instant>,
    /// Leader: numbers and send times of recent heartbeats.
    heartbeat_seq: u64,
    heartbeats_sent: std::collections::VecDeque<(u64, Instant)>,
    /// Leader: per peer, the send time of the newest heartbeat it answered.
    lease_acks: BTreeMap<ReplicaId, Instant>,
    /// Slots below are in this replica's durable checkpoint.
    checkpointed_through: Slot,
    /// Leader: per peer, how far it reported having checkpointed.
    peers_checkpointed: BTreeMap<ReplicaId, Slot>,
    /// Follower: the leader's word on what every full member checkpointed.
    log_floor: Slot,
    /// Leader: the first slot of its own term; reads wait until the slots
    /// it took over below it are committed.
    term_start_slot: Slot,
    /// Follower: the leader it last acknowledged, and when (its lease
    /// promise: no other candidate gets a promise until this + lease).
    leader_contact: Option<(ReplicaId, Instant)>,
    /// The highest ballot peers said they promised, from pre-vote replies.
    seen: Ballot,
    /// Leader: what each peer last reported applying through.
    peers_applied: BTreeMap<ReplicaId, Slot>,
    /// `CatchUp` asks sent since this replica last heard a leader or
    /// took a snapshot: each one waits twice as long as the last (up to
    /// 16 election timeouts), so a replica that was removed, and is
    /// answered by no one, asks rarely.
    asks: u32,
    rng: u64,
    ready: Ready,
}

impl Replica {
    /// A replica starting at `now` from `state` (empty for a new one, or
    /// what a crashed one had made durable), whose state machine has
    /// applied every slot below `applied_through` (those slots are chosen,
    /// and are not reported again) and holds `membership`, the group's
    /// membership at that slot. A replica joining an existing group does
    /// not know it yet (`None`): it accepts values, but stands for leader
    /// only once a snapshot or the chosen values tell it its membership.
    /// It may have granted a lease before it crashed and forgotten it, so
    /// for one lease period it promises no candidate.
    pub fn new(
        config: Config,
        membership: Option<Membership>,
        state: DurableState,
        applied_through: Slot,
        now: Instant,
    ) -> Replica {
        let rng = config.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        // Values it still holds just below the applied point (the driver
        // keeps a window of them) can still be shipped to lagging peers:
        // the run of them that reaches the applied point. Older ones may be
        // cut off from it by a snapshot the state machine installed.
        let mut log_start = applied_through;
        while log_start > 0 && state.accepted.contains_key(&(log_start - 1)) {
            log_start -= 1;
        }
        Replica {
            config,
            state,
            role: Role::Follower,
            commit_through: applied_through,
            log_start,
            reported_through: applied_through,
            configs: membership
                .map(|m| BTreeMap::from([(applied_through, m)]))
                .unwrap_or_default(),
            leader: None,
            election_deadline: None,
            last_heartbeat: None,
            heartbeat_seq: 0,
            heartbeats_sent: std::collections::VecDeque::new(),
            lease_acks: BTreeMap::new(),
            checkpointed_through: applied_through,
            peers_checkpointed: BTreeMap::new(),
            log_floor: 0,
            term_start_slot: 0,
            leader_contact: Some((ReplicaId::MAX, now)),
            seen: Ballot::default(),
            asks: 0,
            peers_applied: BTreeMap::new(),
            rng,
            ready: Ready::default(),
        }
    }

    pub fn id(&self) -> ReplicaId {
        self.config.id
    }

    /// Whether [`Replica::installed`] would take a snapshot now.
    pub fn is_follower(&self) -> bool {
        matches!(self.role, Role::Follower | Role::PreCandidate { .. })
    }

    pub fn is_leader(&self) -> bool {
        matches!(self.role, Role::Leader { .. })
    }

    /// The ballot this replica leads with, if it is the leader.
    pub fn leader_ballot(&self) -> Option<Ballot> {
        match self.role {
            Role::Leader { ballot, .. } => Some(ballot),
            _ => None,
        }
    }

    pub fn leader_hint(&self) -> Option<ReplicaId> {
        self.leader.map(|(ballot, _)| ballot.leader)
    }

    pub fn commit_through(&self) -> Slot {
        self.commit_through
    }

    /// The first slot whose value this replica still holds in memory.
    pub fn log_start(&self) -> Slot {
        self.log_start
    }

    /// Drops the values of chosen slots below `below` (at most the commit
    /// point), bounding memory; returns the first slot still held. A peer
    /// that needs them later must be caught up some other way (a
    /// snapshot), and a candidate whose commit point is below the
    /// compacted point does not count this replica's promise for those
    /// slots (it says where its log starts), so it can never take them for
    /// holes.
    ///
    /// While the group has log replicas (or one is joining) nothing at or
    /// above the log floor is dropped: a log replica that lags or joins
    /// is given the log from the floor, not a state machine.
    pub fn compact(&mut self, below: Slot) -> Slot {
        // Reported slots are chosen (reported_through <= commit_through)
        // and, once the driver applied them, needed by no one here.
        let mut below = below.min(self.reported_through);
        if self.serves_log_replicas() {
            below = below.min(self.log_floor());
        }
        self.drop_below(below);
        self.log_start
    }

    /// Whether a membership this replica knows from its log's start on
    /// (or, leading, plans) has a log replica, or a log replica is
    /// learning to join.
    pub fn serves_log_replicas(&self) -> bool {
        let has_log = |m: &Membership| m.members().iter().any(|m| m.log_only);
        let leading = match &self.role {
            Role::Leader {
                planned, learners, ..
            } => planned.values().any(has_log) || learners.values().any(|l| l.log_only),
            _ => false,
        };
        leading || self.configs.values().any(has_log)
    }

    /// Whether `peer` is a log replica in the latest membership this
    /// replica knows (for a leader, the one it plans).
    fn is_log_member(&self, peer: ReplicaId) -> bool {
        self.membership_at(Slot::MAX)
            .is_some_and(|m| m.members().iter().any(|m| m.id == peer && m.log_only))
    }

    fn drop_below(&mut self, below: Slot) {
        if below <= self.log_start {
            return;
        }
        self.state.accepted = self.state.accepted.split_off(&below);
        self.log_start = below;
        // Keep the membership in force at the log's start and later ones.
        if let Some((&first, _)) = self.configs.range(..=below).next_back() {
            self.configs = self.configs.split_off(&first);
        }
    }

    /// Tells a follower that its state machine now holds a snapshot of
    /// every slot below `through` (a leader's applied state, so a prefix of
    /// chosen values), with `membership` the group's membership at
    /// `through`: those slots count as chosen and reported, and their
    /// values here are dropped: they may be stale (accepted in a ballot
    /// that lost), and nothing could tell them from chosen ones were this
    /// replica to lead and resend them. A snapshot that adds nothing
    /// changes nothing, nor does one offered to a leader or a candidate
    /// (it will take its slots over from promises instead).
    pub fn installed(&mut self, through: Slot, membership: Membership) {
        self.skip_to(through, membership, through);
    }

    /// Tells a log replica (which holds no state machine) that every slot
    /// below `through` is chosen and passed over, its leader's answer to
    /// its lagging below the leader's log ([`Ready::log_starts`]); the
    /// group's membership at `through` is `membership`. Unlike a snapshot
    /// install, values held from the log floor up stay: they may be the
    /// only copy a lagging full member has left, a log replica never
    /// leads (so never resends one as chosen), and a promise reports each
    /// with its ballot, which is always safe.
    pub fn started_log(&mut self, through: Slot, membership: Membership) {
        self.skip_to(through, membership, through.min(self.log_floor));
    }

    fn skip_to(&mut self, through: Slot, membership: Membership, keep_from: Slot) {
        if !self.is_follower() || through <= self.reported_through {
            return;
        }
        self.commit_through = self.commit_through.max(through);
        self.reported_through = through;
        self.asks = 0;
        self.configs.split_off(&through);
        self.configs.insert(through, membership);
        self.drop_below(keep_from);
        self.learn_commits();
    }

    /// The membership of `slot`, as far as this replica knows it: from
    /// chosen values, and for a leader also from the values it proposed
    /// (which, if `slot` is ever chosen in its ballot, are chosen too).
    pub fn membership_at(&self, slot: Slot) -> Option<&Membership> {
        let chosen = self.configs.range(..=slot).next_back();
        let planned = match &self.role {
            Role::Leader { planned, .. } => planned.range(..=slot).next_back(),
            _ => None,
        };
        match (chosen, planned) {
            (Some(c), Some(p)) => Some(if p.0 > c.0 { p.1 } else { c.1 }),
            (c, p) => c.or(p).map(|(_, m)| m),
        }
    }

    /// Whether this leader has proposed a membership change that is not
    /// chosen yet.
    pub fn is_reconfiguring(&self) -> bool {
        matches!(&self.role, Role::Leader { planned, .. } if !planned.is_empty())
    }

    /// Tells the replica it is durable through `through`: restarted, it
    /// would have every slot below (from its checkpoint and its own log).
    /// Reported to the leader, which tells log replicas how far every full
    /// member has come and lets a membership change take effect.
    pub fn checkpointed(&mut self, through: Slot) {
        self.checkpointed_through = self.checkpointed_through.max(through);
        self.advance_change();
    }

    /// Leader: a membership change in flight may be waiting for a report
    /// of how far its new members are durable ([`Replica::new_members_hold`]).
    fn advance_change(&mut self) {
        if self.is_reconfiguring() {
            self.advance();
        }
    }

    /// Slots below which a log replica may drop its values: every full
    /// member of the group has them in a durable checkpoint, so a log
    /// replica never holds the only copy a lagging full member needs. A
    /// leader computes it from its peers' reports (0 for a full member not
    /// heard from); others take the leader's word from its heartbeats.
    pub fn log_floor(&self) -> Slot {
        if !self.is_leader() {
            return self.log_floor;
        }
        // The members it plans count too: once a change is chosen, its
        // new full members lean on what the log replicas kept.
        self.floor_of(self.leader_memberships(), None)
    }

    /// Leader: the membership in force and those it plans.
    fn leader_memberships(&self) -> impl Iterator<Item = &Membership> {
        let planned = match &self.role {
            Role::Leader { planned, .. } => Some(planned.values()),
            _ => None,
        };
        self.membership()
            .into_iter()
            .chain(planned.into_iter().flatten())
    }

    /// Leader: what replica `id` last reported having checkpointed (for
    /// itself, its own), if it has reported.
    fn checkpoint_of(&self, id: ReplicaId) -> Option<Slot> {
        match id {
            id if id == self.config.id => Some(self.checkpointed_through),
            id => self.peers_checkpointed.get(&id).copied(),
        }
    }

    fn full_members<'a>(
        memberships: impl Iterator<Item = &'a Membership>,
    ) -> impl Iterator<Item = ReplicaId> {
        memberships
            .flat_map(Membership::members)
            .filter(|m| !m.log_only)
            .map(|m| m.id)
    }

    /// Leader: the least checkpoint its reports give for the full members
    /// of `memberships`, but `except` (0 for one not heard from).
    fn floor_of<'a>(
        &self,
        memberships: impl Iterator<Item = &'a Membership>,
        except: Option<ReplicaId>,
    ) -> Slot {
        Self::full_members(memberships)
            .filter(|id| Some(*id) != except)
            .map(|id| self.checkpoint_of(id).unwrap_or(0))
            .min()
            .unwrap_or(0)
    }

    /// The membership of the next slot to commit.
    pub fn membership(&self) -> Option<&Membership> {
        self.membership_at(self.commit_through)
    }

    /// Whether this replica may stand for leader: it knows its group's
    /// membership at its commit point and is a full member of it.
    fn may_lead(&self) -> bool {
        self.membership()
            .is_some_and(|m| m.is_full_member(self.config.id))
    }

    /// Everyone a leader talks to: the members of the membership at its
    /// commit point and of every one it plans after it, but itself.
    fn peers(&self) -> Vec<ReplicaId> {
        let mut peers: BTreeSet<ReplicaId> = self
            .membership()
            .into_iter()
            .flat_map(Membership::ids)
            .collect();
        if let Role::Leader { planned, .. } = &self.role {
            peers.extend(planned.values().flat_map(Membership::ids));
        }
        peers.remove(&self.config.id);
        peers.into_iter().collect()
    }

    fn jitter(&mut self) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let base = self.config.election_timeout;
        base + base.mul_f64((self.rng % 1000) as f64 / 1000.0)
    }

    /// The leader's lease runs out at this time (its own clock): a lease
    /// period, shrunk by twice the clock drift, after the send time of the
    /// newest heartbeat a majority (itself included) of the membership at
    /// its commit point has acknowledged. Every candidate needs promises
    /// from a majority of that membership (its election walks the
    /// memberships from its own commit point, which is no later, through
    /// every chosen one), and members holding a lease refuse them.
    pub fn lease_expiry(&self) -> Option<Instant> {
        if !self.is_leader() {
            return None;
        }
        let membership = self.membership()?;
        let mut times: Vec<Instant> = self
            .lease_acks
            .iter()
            .filter(|(peer, _)| membership.contains(**peer))
            .map(|(_, at)| *at)
            .collect();
        if membership.contains(self.config.id) {
            times.extend(self.heartbeats_sent.back().map(|(_, at)| *at));
        }
        times.sort_unstable_by(|a, b| b.cmp(a));
        let start = *times.get(membership.majority() - 1)?;
        let shrink = 1.0 - 2.0 * self.config.clock_drift_max;
        Some(start + self.config.lease_duration.mul_f64(shrink))
    }

    /// A strongly consistent local read: `Some(slot)` when this leader holds
    /// its lease and every slot of earlier terms is committed; the read
    /// must see the state machine applied through `slot`.
    pub fn lease_read(&self, now: Instant) -> Option<Slot> {
        let caught_up = self.commit_through >= self.term_start_slot;
        (caught_up && self.lease_expiry().is_some_and(|expiry| now < expiry))
            .then_some(self.commit_through)
    }

    /// Drains the outputs produced since the last call.
    pub fn poll_ready(&mut self) -> Ready {
        std::mem::take(&mut self.ready)
    }

    fn persist(&mut self, persist: Persist) {
        self.state.apply(&persist);
        self.ready.persist.push(persist);
    }

    /// Proposes a command; it is chosen when it appears in `committed`.
    pub fn propose(&mut self, command: Vec<u8>) -> Result<Slot, NotLeader> {
        let Role::Leader {
            ballot,
            next_slot: slot,
            ..
        } = self.role
        else {
            return Err(NotLeader {
                hint: self.leader_hint(),
            });
        };
        // A caretaker (a leader the values it took over remove) proposes
        // nothing of its own.
        if !self
            .membership_at(slot)
            .is_some_and(|m| m.is_full_member(self.config.id))
        {
            return Err(NotLeader { hint: None });
        }
        if let Role::Leader { next_slot, .. } = &mut self.role {
            *next_slot += 1;
        }
        self.accept_as_leader(ballot, slot, Value::Command(command));
        Ok(slot)
    }

    /// Leader: starts catching replica `id` up before it joins the group
    /// (as a log replica if `log_only`). Heartbeats and new values go to
    /// it, and its replies get it the log, or a snapshot
    /// ([`Ready::snapshots`]; for a log replica an empty one,
    /// [`Ready::log_starts`]), like a lagging member; its votes count for
    /// nothing. A member, or this replica, needs nothing. `replaces`: the
    /// member the change will take out, if any.
    pub fn add_learner(
        &mut self,
        id: ReplicaId,
        log_only: bool,
        replaces: Option<ReplicaId>,
    ) -> Result<(), NotLeader> {
        let peers = self.peers();
        let hint = self.leader_hint();
        let Role::Leader { learners, .. } = &mut self.role else {
            return Err(NotLeader { hint });
        };
        if id != self.config.id && !peers.contains(&id) {
            let learner = learners.entry(id).or_default();
            learner.log_only = log_only;
            learner.replaces = replaces;
        }
        Ok(())
    }

    /// Leader: how many slots learner `id` lacks below the commit point,
    /// as it last reported (`None`: not a learner, or not heard from).
    pub fn learner_lag(&self, id: ReplicaId) -> Option<u64> {
        self.learner(id)
            .and_then(|l| l.reported)
            .map(|(applied, _, _)| self.commit_through.saturating_sub(applied))
    }

    fn learner(&self, id: ReplicaId) -> Option<Learner> {
        match &self.role {
            Role::Leader { learners, .. } => learners.get(&id).copied(),
            _ => None,
        }
    }

    /// Whether learner `id` may join `membership` as `member` now: it is
    /// within [`JOIN_LAG_MAX`] of the commit point; a log replica holds the
    /// log from the floor the full members need up (else a lagging full
    /// member could need a value only the log replica was to keep); and
    /// in a group with log replicas, a full member has checkpointed up to
    /// the floor (else, with the other full members lost, it could need a
    /// value the log replicas have dropped).
    fn may_join(&self, member: Member, membership: &Membership) -> bool {
        let Some(Learner {
            log_only,
            reported: Some((applied, log_start, checkpointed)),
            ..
        }) = self.learner(member.id)
        else {
            return false;
        };
        let near = self.commit_through.saturating_sub(applied) <= JOIN_LAG_MAX;
        // The floor of the group it joins (without it): what the log
        // replicas there keep from, once the change is chosen.
        let floor = self.floor_of(std::iter::once(membership), Some(member.id));
        let logs = membership.members().iter().any(|m| m.log_only);
        let holds = match member.log_only {
            true => log_only && log_start <= floor,
            false => !logs || checkpointed >= floor,
        };
        near && holds
    }

    /// Proposes that `membership` govern the group from the slot after
    /// the one this takes: that is when it is in force if it is chosen.
    /// One change at a time, and the leader stays a full member (to hand
    /// a group to others, change its leader first).
    ///
    /// Every new member must have caught up as a learner to within
    /// [`JOIN_LAG_MAX`] slots of the commit point: an acceptor accepts a
    /// slot without holding those below it, so without this a value
    /// chosen just before the change could be held by a single member of
    /// the new group (the leader) when a member that held it leaves.
    pub fn propose_membership(&mut self, membership: Membership) -> Result<Slot, ReconfigureError> {
        let me = self.config.id;
        let current: BTreeSet<ReplicaId> = self
            .membership()
            .into_iter()
            .flat_map(Membership::ids)
            .collect();
        let joiners: Vec<(ReplicaId, bool)> = membership
            .members()
            .iter()
            .filter(|m| !current.contains(&m.id))
            .map(|m| (m.id, self.may_join(*m, &membership)))
            .collect();
        let Role::Leader {
            ballot,
            next_slot,
            planned,
            learners,
            ..
        } = &mut self.role
        else {
            return Err(NotLeader {
                hint: self.leader_hint(),
            }
            .into());
        };
        if !planned.is_empty() {
            return Err(ReconfigureError::InProgress);
        }
        if !membership.is_full_member(me) {
            return Err(ReconfigureError::RemovesLeader);
        }
        if let Some((id, _)) = joiners.iter().find(|(_, ready)| !ready) {
            return Err(ReconfigureError::NotCaughtUp(*id));
        }
        for (id, _) in &joiners {
            learners.remove(id);
        }
        let (ballot, slot) = (*ballot, *next_slot);
        *next_slot += 1;
        planned.insert(slot + 1, membership.clone());
        self.accept_as_leader(ballot, slot, Value::Reconfigure(membership));
        Ok(slot)
    }

    /// Sends `value` for `slot` to the members of that slot's membership,
    /// and to learners (their votes do not count; they keep up).
    fn accept_as_leader(&mut self, ballot: Ballot, slot: Slot, value: Value) {
        self.persist(Persist::Accept {
            slot,
            ballot,
            value: value.clone(),
        });
        let me = self.config.id;
        let mut peers: BTreeSet<ReplicaId> = self
            .membership_at(slot)
            .into_iter()
            .flat_map(Membership::ids)
            .filter(|id| *id != me)
            .collect();
        if let Role::Leader { learners, .. } = &self.role {
            peers.extend(learners.keys());
        }
        for peer in peers {
            self.ready.send.push((
                peer,
                Message::Accept {
                    ballot,
                    slot,
                    value: value.clone(),
                },
            ));
        }
    }

    /// Tells the replica that `persisted` (from a drained Ready) is durable.
    pub fn persisted(&mut self, persisted: &[Persist]) {
        let me = self.config.id;
        for entry in persisted {
            match (entry, &mut self.role) {
                (
                    Persist::Accept { slot, ballot, .. },
                    Role::Leader {
                        ballot: current,
                        votes,
                        ..
                    },
                ) if ballot == current => {
                    votes.entry(*slot).or_default().insert(me);
                }
                (
                    Persist::Promise(ballot),
                    Role::Candidate {
                        ballot: current,
                        promises,
                        from_slot,
                        ..
                    },
                ) if ballot == current => {
                    let accepted = self
                        .state
                        .accepted
                        .range(*from_slot..)
                        .map(|(s, (b, v))| (*s, *b, v.clone()))
                        .collect();
                    promises.insert(me, (self.log_start, accepted));
                }
                _ => {}
            }
        }
        self.advance();
    }

    /// Timers: elections and heartbeats.
    pub fn tick(&mut self, now: Instant) {
        if let Role::Leader { ballot, .. } = self.role {
            let due = self
                .last_heartbeat
                .is_none_or(|at| now >= at + self.config.heartbeat_interval);
            if due {
                self.last_heartbeat = Some(now);
                self.heartbeat_seq += 1;
                let seq = self.heartbeat_seq;
                self.heartbeats_sent.push_back((seq, now));
                if self.heartbeats_sent.len() > 64 {
                    self.heartbeats_sent.pop_front();
                }
                let commit_through = self.commit_through;
                let log_floor = self.log_floor();
                let mut peers = self.peers();
                if let Role::Leader { learners, .. } = &self.role {
                    peers.extend(learners.keys());
                }
                for peer in &peers {
                    self.ready.send.push((
                        *peer,
                        Message::Heartbeat {
                            ballot,
                            commit_through,
                            seq,
                            log_floor,
                        },
                    ));
                }
                self.resend_unchosen();
            }
            return;
        }
        match self.election_deadline {
            None => self.election_deadline = Some(now + self.jitter()),
            Some(deadline) if now >= deadline && self.may_lead() => self.start_pre_vote(now),
            // A log replica, a removed replica or one that joined and
            // knows no membership yet waits; it still votes. A full
            // replica among them asks to be caught up: the change that
            // makes it a member may be chosen where it cannot see it.
            Some(deadline) if now >= deadline => {
                let backoff = 1 << self.asks.min(4);
                self.election_deadline = Some(now + self.jitter() * backoff);
                if !self.is_log_member(self.config.id) {
                    let from_slot = self.commit_through;
                    for peer in self.peers() {
                        self.ready.send.push((peer, Message::CatchUp { from_slot }));
                    }
                    self.asks += 1;
                }
            }
            Some(_) => {}
        }
    }

    /// The ballot an election started now would use: above any this
    /// replica promised, followed or heard a peer promise.
    fn next_ballot(&self) -> Ballot {
        let round = self
            .state
            .promised
            .round
            .max(self.leader.map_or(0, |(b, _)| b.round))
            .max(self.seen.round)
            + 1;
        Ballot {
            round,
            leader: self.config.id,
        }
    }

    /// Whether this replica would promise `ballot` now: it is higher than
    /// any promise, no lease this replica granted another leader may still
    /// be in force, and it is not itself a leader holding a lease (refusing
    /// is always safe; a leader that lost its majority loses its lease).
    fn may_promise(&self, ballot: Ballot, now: Instant) -> bool {
        let leased = self.leader_contact.is_some_and(|(leader, at)| {
            leader != ballot.leader && now < at + self.config.lease_duration
        });
        let leading = self.lease_expiry().is_some_and(|expiry| now < expiry);
        ballot > self.state.promised && !leased && !leading
    }

    /// Whether this replica grants a pre-vote for `ballot` from a replica
    /// whose commit point is `from_slot`: it would promise, and holds the
    /// log from there. A candidate whose commit point lies below what this
    /// replica has compacted could not count its promise for those slots
    /// (it would learn nothing of them), so it is not encouraged to stand.
    fn grants_pre_vote(&self, ballot: Ballot, from_slot: Slot, now: Instant) -> bool {
        self.may_promise(ballot, now) && from_slot >= self.log_start
    }

    /// Sends `from`, which stands or asks from commit point `from_slot`,
    /// this replica's state machine if it knows a longer chosen prefix,
    /// holds a state machine, and serves no leader (which would catch
    /// `from` up itself). Every slot below a commit point is chosen, so
    /// the snapshot is safe to install wherever it lands.
    ///
    /// A candidate whose commit point lies below this replica's log can
    /// learn nothing of the slots between from its promise, and may need
    /// them: the membership that governs them may have no other live
    /// member that still holds them, and the replica that does (a log
    /// replica, say) may not be in it. A full replica that lagged below
    /// the change that added it cannot stand at all, and asks
    /// (`CatchUp`). Without this either could wait forever for a
    /// majority that no longer exists, while another replica — even a
    /// replaced one — knew the way out. Once caught up, it stands (or
    /// asks) again from there, where newer memberships govern.
    fn help_lagging(&mut self, from: ReplicaId, from_slot: Slot, now: Instant) {
        if from_slot < self.commit_through
            && !self.hears_leader(now)
            && !self.is_leader()
            && !self.is_log_member(self.config.id)
            && !self.ready.snapshots.contains(&from)
        {
            self.ready.snapshots.push(from);
        }
    }

    /// Whether a leader's heartbeat reached this replica within a lease.
    fn hears_leader(&self, now: Instant) -> bool {
        self.leader_contact
            .is_some_and(|(_, at)| now < at + self.config.lease_duration)
    }

    fn start_pre_vote(&mut self, now: Instant) {
        let ballot = self.next_ballot();
        self.role = Role::PreCandidate {
            ballot,
            grants: BTreeSet::from([self.config.id]),
        };
        self.election_deadline = Some(now + self.jitter());
        let from_slot = self.commit_through;
        for peer in self.peers() {
            self.ready
                .send
                .push((peer, Message::PreVote { ballot, from_slot }));
        }
        self.advance_pre_vote(now);
    }

    /// Pre-votes only guard liveness: a majority of the membership at the
    /// commit point is enough to go on to a real election.
    fn advance_pre_vote(&mut self, now: Instant) {
        if let Role::PreCandidate { grants, .. } = &self.role
            && self.membership().is_some_and(|m| m.is_quorum(grants))
        {
            self.start_election(now);
        }
    }

    fn start_election(&mut self, now: Instant) {
        let ballot = self.next_ballot();
        let from_slot = self.commit_through;
        let peers = self.peers();
        self.role = Role::Candidate {
            ballot,
            from_slot,
            promises: BTreeMap::new(),
            asked: peers.iter().copied().collect(),
        };
        self.election_deadline = Some(now + self.jitter());
        self.persist(Persist::Promise(ballot));
        for peer in peers {
            self.ready
                .send
                .push((peer, Message::Prepare { ballot, from_slot }));
        }
    }

    /// Handles a message from `from`.
    pub fn handle(&mut self, from: ReplicaId, message: Message, now: Instant) {
        match message {
            Message::Prepare { ballot, from_slot } => {
                // While the lease this replica granted its leader may still
                // be in force, no other candidate gets a promise. One that
                // compacted past `from_slot` still promises, saying so: the
                // candidate may need it only for a later membership.
                if self.may_promise(ballot, now) {
                    if from_slot < self.log_start {
                        self.help_lagging(from, from_slot, now);
                    }
                    self.step_down_if_outranked(ballot);
                    self.persist(Persist::Promise(ballot));
                    let accepted = self
                        .state
                        .accepted
                        .range(from_slot.max(self.log_start)..)
                        .map(|(s, (b, v))| (*s, *b, v.clone()))
                        .collect();
                    let log_start = self.log_start;
                    self.ready.send_after_persist.push((
                        from,
                        Message::Promise {
                            ballot,
                            log_start,
                            accepted,
                        },
                    ));
                    self.election_deadline = Some(now + self.jitter());
                } else {
                    self.ready.send.push((
                        from,
                        Message::Reject {
                            promised: self.state.promised,
                        },
                    ));
                }
            }
            Message::PreVote { ballot, from_slot } => {
                let granted = self.grants_pre_vote(ballot, from_slot, now);
                if from_slot < self.log_start && self.may_promise(ballot, now) {
                    self.help_lagging(from, from_slot, now);
                }
                let promised = self.state.promised;
                self.ready.send.push((
                    from,
                    Message::PreVoteReply {
                        ballot,
                        granted,
                        promised,
                    },
                ));
                self.tell_outsider(from);
            }
            Message::CatchUp { from_slot } => {
                // A leader answers nothing: it catches up its own peers
                // through heartbeats, and one that is not its peer was
                // removed and needs nothing (a heartbeat would have it
                // follow, and be sent the log, for good).
                self.help_lagging(from, from_slot, now);
                // One that knows more than this replica may hold what it
                // needs: ask it back (it answers, knowing more, with its
                // state machine, and asks nothing back).
                let led = self.hears_leader(now);
                if from_slot > self.commit_through && !led && !self.is_leader() {
                    let from_slot = self.commit_through;
                    self.ready.send.push((from, Message::CatchUp { from_slot }));
                }
            }
            Message::PreVoteReply {
                ballot,
                granted,
                promised,
            } => {
                // A peer that promised higher would refuse this ballot
                // forever: the next one must be above it. (Peers that lag
                // below a compacted log cannot win, and may be the ones
                // that raised the ballots the replica that can win must
                // pass.)
                self.seen = self.seen.max(promised);
                if let Role::PreCandidate {
                    ballot: current,
                    grants,
                } = &mut self.role
                    && ballot == *current
                    && granted
                {
                    grants.insert(from);
                    self.advance_pre_vote(now);
                }
            }
            Message::Promise {
                ballot,
                log_start,
                accepted,
            } => {
                if let Role::Candidate {
                    ballot: current,
                    promises,
                    ..
                } = &mut self.role
                    && ballot == *current
                {
                    promises.insert(from, (log_start, accepted));
                    self.advance();
                }
            }
            Message::Accept {
                ballot,
                slot,
                value,
            } => {
                if ballot >= self.state.promised {
                    self.step_down_if_outranked(ballot);
                    self.hear_leader(ballot, None, now);
                    if ballot > self.state.promised {
                        self.persist(Persist::Promise(ballot));
                    }
                    self.persist(Persist::Accept {
                        slot,
                        ballot,
                        value,
                    });
                    self.ready
                        .send_after_persist
                        .push((from, Message::Accepted { ballot, slot }));
                    self.learn_commits();
                } else {
                    self.ready.send.push((
                        from,
                        Message::Reject {
                            promised: self.state.promised,
                        },
                    ));
                }
            }
            Message::Accepted { ballot, slot } => {
                if let Role::Leader {
                    ballot: current,
                    votes,
                    ..
                } = &mut self.role
                    && ballot == *current
                {
                    votes.entry(slot).or_default().insert(from);
                    self.advance();
                }
            }
            Message::Reject { promised } => {
                let mine = match &self.role {
                    Role::Candidate { ballot, .. } | Role::Leader { ballot, .. } => Some(*ballot),
                    Role::Follower | Role::PreCandidate { .. } => None,
                };
                // A replaced replica's promise binds no quorum of this
                // group: a leader does not step down for it.
                let outsider = self.is_leader() && !self.peers().contains(&from);
                if mine.is_some_and(|b| promised > b) && !outsider {
                    self.role = Role::Follower;
                    self.election_deadline = Some(now + self.jitter());
                }
            }
            Message::Heartbeat {
                ballot,
                commit_through,
                seq,
                log_floor,
            } => {
                if ballot >= self.state.promised {
                    self.step_down_if_outranked(ballot);
                    self.hear_leader(ballot, Some(commit_through), now);
                    self.learn_commits();
                    // A new leader may know less than the last one: its
                    // word stands (a lower floor only keeps more).
                    self.log_floor = log_floor;
                    // Answering grants the lease: remember when.
                    self.leader_contact = Some((ballot.leader, now));
                    let applied_through = self.commit_through;
                    self.ready.send.push((
                        from,
                        Message::HeartbeatReply {
                            ballot,
                            applied_through,
                            seq,
                            checkpointed_through: self.checkpointed_through,
                            log_start: self.log_start,
                        },
                    ));
                } else {
                    // This replica promised a higher ballot in an election
                    // that came to nothing: tell the leader, or it would
                    // never learn (a caught-up leader sends it nothing else)
                    // and this replica would never catch up.
                    self.ready.send.push((
                        from,
                        Message::Reject {
                            promised: self.state.promised,
                        },
                    ));
                }
            }
            Message::HeartbeatReply {
                ballot,
                applied_through,
                seq,
                checkpointed_through,
                log_start,
            } => {
                if let Role::Leader {
                    ballot: current, ..
                } = self.role
                    && ballot == current
                {
                    let reported = self.peers_checkpointed.entry(from).or_default();
                    *reported = (*reported).max(checkpointed_through);
                    let applied = self.peers_applied.entry(from).or_default();
                    *applied = (*applied).max(applied_through);
                    if let Role::Leader { learners, .. } = &mut self.role
                        && let Some(learner) = learners.get_mut(&from)
                    {
                        learner.reported = Some((applied_through, log_start, checkpointed_through));
                    }
                    self.advance_change();
                    if let Some((_, sent)) = self.heartbeats_sent.iter().find(|(s, _)| *s == seq) {
                        let sent = *sent;
                        let ack = self.lease_acks.entry(from).or_insert(sent);
                        *ack = (*ack).max(sent);
                    }
                    self.catch_up(from, current, applied_through);
                    self.retire_if_removed(now);
                }
            }
        }
    }

    /// A caretaker leader (one the values it took over removed, see
    /// `advance_candidate`) steps down once the change is committed and
    /// a majority of the new membership has heard so: they hold it, know
    /// they are members, and one of them stands.
    fn retire_if_removed(&mut self, now: Instant) {
        if !self.is_leader() || self.may_lead() {
            return;
        }
        let Some(membership) = self.membership() else {
            return;
        };
        let through = self.commit_through;
        let knowing = self
            .peers_applied
            .iter()
            .filter(|(_, applied)| **applied >= through)
            .map(|(id, _)| id);
        if membership.is_quorum(knowing) {
            self.role = Role::Follower;
            self.election_deadline = Some(now + self.jitter());
        }
    }

    /// Leader: a replica outside the group asking for votes was replaced
    /// and does not know it (no one sends it the log any more). A
    /// heartbeat makes it follow; its reply gets it the chosen values, or
    /// a snapshot, that say it is out, and it stops asking.
    fn tell_outsider(&mut self, from: ReplicaId) {
        let Role::Leader { ballot, .. } = self.role else {
            return;
        };
        if from == self.config.id || self.peers().contains(&from) {
            return;
        }
        let log_floor = self.log_floor();
        self.ready.send.push((
            from,
            Message::Heartbeat {
                ballot,
                commit_through: self.commit_through,
                seq: self.heartbeat_seq,
                log_floor,
            },
        ));
    }

    /// A leader or candidate that sees a higher ballot becomes a follower;
    /// a pre-candidate that hears a live leader or candidate stops asking.
    fn step_down_if_outranked(&mut self, ballot: Ballot) {
        let mine = match &self.role {
            Role::Candidate { ballot, .. } | Role::Leader { ballot, .. } => Some(*ballot),
            Role::PreCandidate { .. } => {
                self.role = Role::Follower;
                return;
            }
            Role::Follower => None,
        };
        if mine.is_some_and(|b| ballot > b) {
            self.role = Role::Follower;
        }
    }

    fn hear_leader(&mut self, ballot: Ballot, commit_through: Option<Slot>, now: Instant) {
        let known = self
            .leader
            .filter(|(b, _)| *b == ballot)
            .map_or(0, |(_, c)| c);
        self.leader = Some((ballot, commit_through.unwrap_or(known).max(known)));
        self.election_deadline = Some(now + self.jitter());
        self.asks = 0;
    }

    /// Leader: resends Accepts that may have been lost — slots not yet
    /// chosen, to the members of their membership that have not voted for
    /// them, a bounded window at a time. Without this a lost Accept would
    /// stall every later slot.
    fn resend_unchosen(&mut self) {
        const WINDOW: u64 = 64;
        let Role::Leader {
            ballot,
            next_slot,
            votes,
            ..
        } = &self.role
        else {
            return;
        };
        let end = (*next_slot).min(self.commit_through + WINDOW);
        let mut resend = Vec::new();
        for slot in self.commit_through..end {
            let Some((accepted_ballot, value)) = self.state.accepted.get(&slot) else {
                continue;
            };
            if accepted_ballot != ballot {
                continue;
            }
            let members = self
                .membership_at(slot)
                .into_iter()
                .flat_map(Membership::ids);
            for peer in members.filter(|id| *id != self.config.id) {
                if !votes.get(&slot).is_some_and(|v| v.contains(&peer)) {
                    resend.push((
                        peer,
                        Message::Accept {
                            ballot: *ballot,
                            slot,
                            value: value.clone(),
                        },
                    ));
                }
            }
        }
        self.ready.send.extend(resend);
    }

    /// Resends what a lagging follower lacks, a bounded window at a time,
    /// or asks for a snapshot when this leader no longer holds it — or,
    /// for a learner, when it lacks more than a few windows (it holds no
    /// state worth keeping, and new values reach it as they are proposed:
    /// a snapshot and those make it whole).
    fn catch_up(&mut self, peer: ReplicaId, ballot: Ballot, applied_through: Slot) {
        const WINDOW: u64 = 256;
        let learner = self.learner(peer);
        if learner.map_or_else(|| self.is_log_member(peer), |l| l.log_only) {
            // A log replica, joining or lagging, needs the log from the
            // floor up (no further down: the log below may be long), with
            // an empty state through its first slot; from this leader's
            // first held slot if that is later. The floor counts every
            // full member that stays — one not heard from as holding
            // nothing, since after one more loss it may have only the log
            // replica to learn from — but not the member a joining log
            // replica replaces (typically lost: it would hold the floor
            // at zero). A joining one may join once it holds the log from
            // the floor of its new group.
            let replaced = learner.and_then(|l| l.replaces);
            let start = self
                .floor_of(self.leader_memberships(), replaced)
                .clamp(self.log_start, self.commit_through.max(self.log_start));
            if applied_through < start {
                self.ready.log_starts.push((peer, start));
                return;
            }
        } else if applied_through < self.log_start
            || (learner.is_some()
                && self.commit_through.saturating_sub(applied_through) > 4 * WINDOW)
        {
            self.ready.snapshots.push(peer);
            return;
        }
        let end = self.commit_through.min(applied_through + WINDOW);
        if end <= applied_through {
            return; // the follower is level, or ahead of a fresh leader's commit point
        }
        let resend: Vec<(Slot, Value)> = self
            .state
            .accepted
            .range(applied_through..end)
            .map(|(s, (_, v))| (*s, v.clone()))
            .collect();
        for (slot, value) in resend {
            self.ready.send.push((
                peer,
                Message::Accept {
                    ballot,
                    slot,
                    value,
                },
            ));
        }
    }

    /// A follower marks as chosen the slots below the leader's commit point
    /// that it accepted in the leader's ballot: in one ballot the leader
    /// proposes one value per slot, so those are the chosen values.
    fn learn_commits(&mut self) {
        if self.is_leader() {
            return;
        }
        let Some((ballot, leader_commit)) = self.leader else {
            return;
        };
        while self.commit_through < leader_commit {
            match self.state.accepted.get(&self.commit_through) {
                Some((b, _)) if *b == ballot => self.commit_through += 1,
                _ => break,
            }
        }
        self.report_commits();
    }

    /// Candidate: becomes leader once its promises hold a majority of
    /// every membership that may govern a slot from its commit point on.
    /// Leader: advances the commit point over slots a majority of their
    /// membership accepted.
    fn advance(&mut self) {
        match self.role {
            Role::Candidate { .. } => self.advance_candidate(),
            Role::Leader { .. } => self.advance_leader(),
            Role::Follower | Role::PreCandidate { .. } => {}
        }
    }

    /// The memberships a candidate must hear a majority of: the one at
    /// its commit point, then the one each `Reconfigure` among the values
    /// it takes over names, from the slot after it. (Those values are the
    /// chosen ones wherever a value was chosen, by induction over the
    /// slots: each slot's membership was heard from by a majority.)
    fn advance_candidate(&mut self) {
        let me = self.config.id;
        let Role::Candidate {
            ballot,
            from_slot,
            promises,
            asked,
        } = &self.role
        else {
            return;
        };
        let (ballot, from_slot) = (*ballot, *from_slot);
        let Some(first) = self.membership_at(from_slot).cloned() else {
            return; // cannot be: a replica that knows none does not stand
        };
        let in_first = first.is_full_member(me);
        // The highest-ballot value for each slot, no-ops for holes.
        let mut chosen: BTreeMap<Slot, (Ballot, Value)> = BTreeMap::new();
        for (slot, b, value) in promises.values().flat_map(|(_, values)| values) {
            if *slot >= from_slot && chosen.get(slot).is_none_or(|(best, _)| b > best) {
                chosen.insert(*slot, (*b, value.clone()));
            }
        }
        let mut needed = vec![(from_slot, first)];
        for (slot, (_, value)) in &chosen {
            if let Value::Reconfigure(membership) = value {
                needed.push((slot + 1, membership.clone()));
            }
        }
        let unasked: BTreeSet<ReplicaId> = needed
            .iter()
            .flat_map(|(_, m)| m.ids())
            .filter(|id| *id != me && !asked.contains(id))
            .collect();
        // A promise counts for a membership only if its sender holds the
        // log from the slot that membership governs on: it knows nothing
        // of the slots it compacted.
        let won = needed.iter().all(|(first, m)| {
            m.is_quorum(
                promises
                    .iter()
                    .filter(|(_, (log_start, _))| log_start <= first)
                    .map(|(id, _)| id),
            )
        });
        if let Role::Candidate { asked, .. } = &mut self.role {
            asked.extend(&unasked);
        }
        for peer in unasked {
            self.ready
                .send
                .push((peer, Message::Prepare { ballot, from_slot }));
        }
        // A replica that would lead a group it is not a full member of
        // does not take it over: its votes would not count and routers
        // would not find it. But if it is a member at its commit point and
        // the values it takes over remove it, the new members may not
        // know they are members (the change may be accepted, not
        // committed, and they may lack it), and no one else may be able
        // to finish it: it leads as a caretaker, proposes nothing of its
        // own, and steps down once the new members know the change is
        // committed (`retire_if_removed`).
        let member = needed.last().is_some_and(|(_, m)| m.is_full_member(me));
        if !won || !(member || in_first) {
            return;
        }
        let next_slot = chosen
            .keys()
            .next_back()
            .map_or(from_slot, |s| s + 1)
            .max(from_slot);
        self.role = Role::Leader {
            ballot,
            next_slot,
            votes: BTreeMap::new(),
            planned: needed.into_iter().skip(1).collect(),
            learners: BTreeMap::new(),
        };
        self.leader = Some((ballot, self.commit_through));
        self.last_heartbeat = None;
        self.term_start_slot = next_slot;
        self.lease_acks.clear();
        self.heartbeats_sent.clear();
        self.peers_checkpointed.clear();
        self.peers_applied.clear();
        for slot in from_slot..next_slot {
            let value = chosen.remove(&slot).map_or(Value::Noop, |(_, v)| v);
            self.accept_as_leader(ballot, slot, value);
        }
    }

    fn advance_leader(&mut self) {
        loop {
            let slot = self.commit_through;
            let Role::Leader { votes, .. } = &self.role else {
                return;
            };
            let chosen = votes.get(&slot).is_some_and(|voters| {
                self.membership_at(slot)
                    .is_some_and(|m| m.is_quorum(voters))
            });
            if !chosen || !self.new_members_hold(slot) {
                break;
            }
            if let Role::Leader { votes, .. } = &mut self.role {
                votes.remove(&slot);
            }
            self.commit_through += 1;
        }
        self.report_commits();
    }

    /// Whether the commit point may pass `slot`: unless it holds a
    /// membership change, at once; if it does, once a majority of the new
    /// membership has reported holding every slot below it durably (the
    /// leader counting itself). An acceptor accepts a slot without those
    /// below it, so without this the values chosen just before a change
    /// could be held by a minority of the new group (the leader alone,
    /// once the member that also held them leaves, and a new member and
    /// a lagging one have not caught up): losing one replica would lose
    /// them. Holding the commit point back is always safe.
    fn new_members_hold(&self, slot: Slot) -> bool {
        let Some((_, Value::Reconfigure(next))) = self.state.accepted.get(&slot) else {
            return true;
        };
        let holders: Vec<ReplicaId> = next
            .ids()
            .filter(|&id| {
                self.checkpoint_of(id)
                    .is_some_and(|durable| durable >= slot)
            })
            .collect();
        next.is_quorum(&holders)
    }

    /// Reports newly chosen values; a chosen `Reconfigure` becomes the
    /// membership of the slots after it.
    fn report_commits(&mut self) {
        while self.reported_through < self.commit_through {
            let slot = self.reported_through;
            let (_, value) = self
                .state
                .accepted
                .get(&slot)
                .expect("a committed slot has a value");
            if let Value::Reconfigure(membership) = value {
                self.configs.insert(slot + 1, membership.clone());
                if let Role::Leader { planned, .. } = &mut self.role {
                    planned.remove(&(slot + 1));
                }
            }
            self.ready.committed.push((slot, value.clone()));
            self.reported_through += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(id: ReplicaId) -> Config {
        Config {
            id,
            heartbeat_interval: Duration::from_millis(20),
            lease_duration: Duration::from_millis(60),
            clock_drift_max: 0.05,
            election_timeout: Duration::from_millis(100),
            seed: 7 + id as u64,
        }
    }

    /// A replica that waits a minute before it stands: in a test, others
    /// lead.
    fn patient(id: ReplicaId) -> Config {
        Config {
            election_timeout: Duration::from_secs(60),
            ..config(id)
        }
    }

    /// Delivers every output of `replicas` (flushes complete at once)
    /// until none is left.
    /// Returns the empty snapshots leaders asked for
    /// ([`Ready::log_starts`]).
    fn settle(replicas: &mut [Replica], now: Instant) -> Vec<(ReplicaId, Slot)> {
        let mut log_starts = Vec::new();
        loop {
            let mut sent = Vec::new();
            for (from, replica) in replicas.iter_mut().enumerate() {
                let ready = replica.poll_ready();
                replica.persisted(&ready.persist);
                log_starts.extend(ready.log_starts);
                let messages = ready.send.into_iter().chain(ready.send_after_persist);
                sent.extend(messages.map(|(to, m)| (from, to, m)));
            }
            if sent.is_empty() {
                return log_starts;
            }
            for (from, to, message) in sent {
                if let Some(replica) = replicas.get_mut(to) {
                    replica.handle(from, message, now);
                }
            }
        }
    }

    /// Moves the clock 25 ms on, ticks every replica and settles; returns
    /// the log starts leaders asked for.
    fn tick(replicas: &mut [Replica], now: &mut Instant) -> Vec<(ReplicaId, Slot)> {
        *now += Duration::from_millis(25);
        for r in replicas.iter_mut() {
            r.tick(*now);
        }
        settle(replicas, *now)
    }

    #[test]
    fn a_new_member_joins_only_once_it_has_caught_up_as_a_learner() {
        let mut now = Instant::now();
        let alone = Membership::full([0]).unwrap();
        let mut replicas = vec![
            Replica::new(config(0), Some(alone), DurableState::default(), 0, now),
            Replica::new(config(1), None, DurableState::default(), 0, now),
        ];
        while !replicas[0].is_leader() {
            now += Duration::from_millis(50);
            replicas[0].tick(now);
            settle(&mut replicas, now);
        }
        for n in 0..10u8 {
            replicas[0].propose(vec![n]).unwrap();
        }
        settle(&mut replicas, now);
        assert_eq!(replicas[0].commit_through(), 10);
        let pair = Membership::full([0, 1]).unwrap();
        // Not a learner yet, then a learner not heard from: refused.
        assert_eq!(
            replicas[0].propose_membership(pair.clone()),
            Err(ReconfigureError::NotCaughtUp(1))
        );
        replicas[0].add_learner(1, false, None).unwrap();
        assert_eq!(replicas[0].learner_lag(1), None);
        assert_eq!(
            replicas[0].propose_membership(pair.clone()),
            Err(ReconfigureError::NotCaughtUp(1))
        );
        // Heartbeats reach it; its replies get it the log.
        for _ in 0..3 {
            now += Duration::from_millis(25);
            replicas[0].tick(now);
            settle(&mut replicas, now);
        }
        assert_eq!(replicas[0].learner_lag(1), Some(0));
        assert_eq!(replicas[1].commit_through(), 10);
        // A learner's votes count for nothing: the leader's lease and its
        // commits are its own, and the learner does not stand.
        assert!(replicas[1].membership().is_none());
        let slot = replicas[0].propose_membership(pair.clone()).unwrap();
        assert_eq!(slot, 10);
        assert_eq!(
            replicas[0].learner_lag(1),
            None,
            "a member now, no longer a learner"
        );
        settle(&mut replicas, now);
        // Chosen, but in force only once a majority of the new members
        // (both) say they hold every slot below it durably.
        assert_eq!(replicas[0].commit_through(), 10);
        replicas[1].checkpointed(10);
        now += Duration::from_millis(25);
        replicas[0].tick(now);
        settle(&mut replicas, now);
        assert_eq!(
            replicas[0].commit_through(),
            10,
            "the leader's own report missing"
        );
        replicas[0].checkpointed(10);
        settle(&mut replicas, now);
        assert_eq!(replicas[0].commit_through(), 11);
        assert_eq!(replicas[0].membership_at(11), Some(&pair));
        // From here the new member's vote is needed: alone, the leader
        // chooses nothing.
        replicas[0].propose(vec![99]).unwrap();
        let mut alone = vec![replicas.remove(0)];
        settle(&mut alone, now);
        assert_eq!(alone[0].commit_through(), 11);
    }

    fn member(id: ReplicaId, log_only: bool) -> Member {
        Member { id, log_only }
    }

    /// A follower holding values of slots 0..10, chosen in `ballot`.
    fn follower_holding_ten(id: ReplicaId, ballot: Ballot, now: Instant) -> Replica {
        holding(id, ballot, 10, 0, now)
    }

    /// The same, told by leader 0's heartbeat that slots 0..10 are chosen.
    fn follower_committed_ten(id: ReplicaId, ballot: Ballot, now: Instant) -> Replica {
        let mut replica = follower_holding_ten(id, ballot, now);
        replica.handle(
            0,
            Message::Heartbeat {
                ballot,
                commit_through: 10,
                seq: 1,
                log_floor: 0,
            },
            now,
        );
        replica
    }

    /// Replica `id` of group {0, 1, 2}, holding values of slots
    /// `0..slots` accepted in `ballot`, applied through `applied`.
    fn holding(id: ReplicaId, ballot: Ballot, slots: Slot, applied: Slot, now: Instant) -> Replica {
        let mut state = DurableState::default();
        for slot in 0..slots {
            state
                .accepted
                .insert(slot, (ballot, Value::Command(vec![slot as u8])));
        }
        let group = Membership::full([0, 1, 2]).unwrap();
        Replica::new(config(id), Some(group), state, applied, now)
    }

    /// A log start passes slots over but keeps what is held from the
    /// floor up; a snapshot install drops everything below it.
    #[test]
    fn a_log_start_keeps_the_log_from_the_floor_a_snapshot_does_not() {
        let now = Instant::now();
        let ballot = Ballot {
            round: 1,
            leader: 0,
        };
        let heartbeat = Message::Heartbeat {
            ballot,
            commit_through: 0,
            seq: 1,
            log_floor: 3,
        };
        let group = Membership::full([0, 1, 2]).unwrap();
        let mut log = follower_holding_ten(1, ballot, now);
        log.handle(0, heartbeat.clone(), now);
        log.started_log(8, group.clone());
        assert_eq!(log.commit_through(), 8);
        assert_eq!(log.log_start(), 3, "kept from the floor");
        let mut full = follower_holding_ten(2, ballot, now);
        full.handle(0, heartbeat, now);
        full.installed(8, group);
        assert_eq!(full.log_start(), 8, "dropped below the snapshot");
    }

    /// A replica that compacted past a candidate's commit point still
    /// promises, saying where its log starts, and reports values from
    /// there; it grants no pre-vote to that candidate.
    #[test]
    fn a_promise_says_where_its_log_starts() {
        let mut now = Instant::now();
        let ballot = Ballot {
            round: 1,
            leader: 0,
        };
        let mut replica = follower_committed_ten(1, ballot, now);
        assert_eq!(replica.compact(6), 6);
        let _ = replica.poll_ready();
        // Past the lease it granted the old leader.
        now += Duration::from_millis(100);
        let candidate = Ballot {
            round: 2,
            leader: 2,
        };
        replica.handle(
            2,
            Message::PreVote {
                ballot: candidate,
                from_slot: 4,
            },
            now,
        );
        replica.handle(
            2,
            Message::Prepare {
                ballot: candidate,
                from_slot: 4,
            },
            now,
        );
        let ready = replica.poll_ready();
        assert!(
            ready
                .send
                .iter()
                .any(|(_, m)| matches!(m, Message::PreVoteReply { granted: false, .. }))
        );
        let promise = ready.send_after_persist.iter().find_map(|(to, m)| match m {
            Message::Promise {
                log_start,
                accepted,
                ..
            } if *to == 2 => Some((
                *log_start,
                accepted.iter().map(|(s, ..)| *s).collect::<Vec<_>>(),
            )),
            _ => None,
        });
        assert_eq!(promise, Some((6, (6..10).collect())));
        // Its promise tells the candidate nothing of slots 4 and 5, so it
        // offers its state machine (every slot below 10 is chosen).
        assert_eq!(ready.snapshots, vec![2]);
    }

    /// A replica that may not stand (it knows no membership it is a full
    /// member of) asks to be caught up once it hears no leader; a replica
    /// that knows a longer chosen prefix answers with its state machine,
    /// but not while it still hears a leader, which catches up its own
    /// followers.
    #[test]
    fn a_replica_that_cannot_stand_asks_and_one_that_knows_more_sends_its_state() {
        let mut now = Instant::now();
        let ballot = Ballot {
            round: 1,
            leader: 0,
        };
        // Replica 3 joined a group it has not yet seen change: it knows
        // the membership {0, 1, 2} at slot 2.
        let mut lagging = holding(3, ballot, 2, 2, now);
        let _ = lagging.poll_ready();
        now += Duration::from_millis(250);
        lagging.tick(now);
        now += Duration::from_millis(250);
        lagging.tick(now);
        let asked: Vec<ReplicaId> = lagging
            .poll_ready()
            .send
            .iter()
            .filter(|(_, m)| *m == Message::CatchUp { from_slot: 2 })
            .map(|(to, _)| *to)
            .collect();
        assert_eq!(asked, vec![0, 1, 2]);

        let mut helper = follower_committed_ten(1, ballot, now);
        let _ = helper.poll_ready();
        helper.handle(3, Message::CatchUp { from_slot: 2 }, now);
        assert!(
            helper.poll_ready().snapshots.is_empty(),
            "its leader is alive"
        );
        now += Duration::from_millis(100);
        helper.handle(3, Message::CatchUp { from_slot: 2 }, now);
        assert_eq!(helper.poll_ready().snapshots, vec![3]);
        // Nothing to give one that knows as much.
        helper.handle(3, Message::CatchUp { from_slot: 10 }, now);
        assert!(helper.poll_ready().snapshots.is_empty());
    }

    #[test]
    fn memberships_are_checked_and_count_only_their_members() {
        assert_eq!(
            Membership::new(vec![member(1, false), member(1, true), member(2, false)]),
            Err(MembershipError::Duplicate(1))
        );
        // Log replicas stand in for a minority only.
        assert_eq!(
            Membership::new(vec![member(0, false), member(1, true)]),
            Err(MembershipError::TooFewFullMembers)
        );
        assert_eq!(
            Membership::new(vec![member(0, false), member(1, true), member(2, true)]),
            Err(MembershipError::TooFewFullMembers)
        );
        let group = Membership::new(vec![member(5, false), member(0, true), member(3, false)])
            .expect("two full members and a log replica");
        assert_eq!(group.ids().collect::<Vec<_>>(), vec![0, 3, 5]);
        assert!(group.is_full_member(3) && !group.is_full_member(0) && group.contains(0));
        assert!(group.is_quorum(&[0, 5]));
        assert!(!group.is_quorum(&[5]));
        // Votes from outside the group do not make a majority of it.
        assert!(!group.is_quorum(&[5, 1, 2, 4]));
    }

    #[test]
    fn a_log_replica_joins_only_holding_the_log_from_the_full_members_floor() {
        let mut now = Instant::now();
        let pair = Membership::full([0, 1]).unwrap();
        // Replica 1 waits far longer before it stands: replica 0 leads.
        let mut replicas = vec![
            Replica::new(
                config(0),
                Some(pair.clone()),
                DurableState::default(),
                0,
                now,
            ),
            Replica::new(
                patient(1),
                Some(pair.clone()),
                DurableState::default(),
                0,
                now,
            ),
            Replica::new(config(2), None, DurableState::default(), 0, now),
        ];
        for _ in 0..100 {
            if replicas[0].is_leader() {
                break;
            }
            tick(&mut replicas, &mut now);
        }
        assert!(replicas[0].is_leader());
        for n in 0..20u8 {
            replicas[0].propose(vec![n]).unwrap();
        }
        settle(&mut replicas, now);
        // The leader dropped its values below 12; the full members have
        // checkpointed through 20 and 5: the floor is 5.
        replicas[0].compact(12);
        replicas[0].checkpointed(20);
        replicas[1].checkpointed(5);
        let with_log = Membership::new(vec![
            Member {
                id: 0,
                log_only: false,
            },
            Member {
                id: 1,
                log_only: false,
            },
            Member {
                id: 2,
                log_only: true,
            },
        ])
        .unwrap();
        replicas[0].add_learner(2, true, None).unwrap();
        let mut asked = Vec::new();
        for _ in 0..3 {
            asked.extend(tick(&mut replicas, &mut now));
        }
        // No state for a log replica: an empty one through the leader's
        // first held slot, then the log.
        assert!(asked.contains(&(2, 12)), "{asked:?}");
        replicas[2].installed(12, pair.clone());
        for _ in 0..3 {
            tick(&mut replicas, &mut now);
        }
        assert_eq!(replicas[2].commit_through(), 20);
        assert_eq!(replicas[0].log_floor(), 5);
        // Its log starts at 12, above what member 1 may need: refused.
        assert_eq!(
            replicas[0].propose_membership(with_log.clone()),
            Err(ReconfigureError::NotCaughtUp(2))
        );
        // Member 1 checkpoints past it: the log replica may join.
        replicas[1].checkpointed(20);
        tick(&mut replicas, &mut now);
        assert_eq!(replicas[0].log_floor(), 20);
        assert_eq!(replicas[0].propose_membership(with_log), Ok(20));
    }

    /// A candidate that wins while the values it takes over remove it
    /// (its last leader had the change replacing it accepted, and the new
    /// member lacks the change) leads as a caretaker: it proposes nothing
    /// of its own, gets the change committed, and steps down once the new
    /// members know; the new member then leads.
    #[test]
    fn a_leader_removed_by_the_values_it_took_over_finishes_the_change_then_steps_down() {
        let mut now = Instant::now();
        let old = Membership::full([0, 1, 2]).unwrap();
        let new = Membership::full([1, 2, 3]).unwrap();
        let last = Ballot {
            round: 1,
            leader: 2,
        };
        let mut state = DurableState::default();
        state
            .accepted
            .insert(0, (last, Value::Reconfigure(new.clone())));
        // Replicas 1 and 2 wait far longer before they stand.
        let mut replicas = vec![
            Replica::new(
                config(0),
                Some(old.clone()),
                DurableState::default(),
                0,
                now,
            ),
            Replica::new(patient(1), Some(old.clone()), state, 0, now),
            Replica::new(patient(2), Some(old), DurableState::default(), 0, now),
            Replica::new(config(3), None, DurableState::default(), 0, now),
        ];
        let mut caretaker = false;
        for _ in 0..400 {
            tick(&mut replicas, &mut now);
            if replicas[0].is_leader() && !caretaker {
                caretaker = true;
                assert_eq!(
                    replicas[0].propose(vec![1]),
                    Err(NotLeader { hint: None }),
                    "a caretaker proposes nothing of its own"
                );
            }
            if replicas[3].is_leader() {
                break;
            }
        }
        assert!(caretaker, "replica 0 never took over");
        assert!(!replicas[0].is_leader(), "the caretaker did not step down");
        assert!(replicas[3].is_leader(), "the new member never led");
        assert_eq!(replicas[3].membership(), Some(&new));
        assert!(replicas[3].propose(vec![2]).is_ok());
    }
}
