//! The request router (not built yet): it will accept client connections
//! on every core, find a key's partition through the partition-map cache,
//! forward to the partition's leader, and apply admission control. See
//! `shared/DESIGN.md` and the open issues.
