//! The store's disk side: what makes a change durable and what lies beside sled's
//! files. The write path — the write-ahead log (`wal.rs`, its file format), the engine
//! that appends to it, applies it to sled and checkpoints (`commit.rs`), the memtable
//! of logged-but-unapplied values (`memtable.rs`) and the replay at open
//! (`replay.rs`) — and the files that guard sled's: the clean-stop seal (`seal.rs`),
//! the high-water marks and ID reservation (`highwater.rs`), and the copy kept while
//! sled recovers after a crash (`guard.rs`). The rest of the store reads and writes
//! through `Space` (`../space.rs`) and never touches these files itself.

pub(super) mod commit;
pub(super) mod guard;
pub(super) mod highwater;
pub(super) mod memtable;
pub(super) mod replay;
pub(super) mod seal;
pub(super) mod wal;
