//! The metadata service (not built yet): the authoritative partition map in
//! a Paxos-replicated group and the MemDS fleet that serves compressed
//! lookups to routers. See `shared/DESIGN.md` and the open issues.
