//! Identities, content hashes, amounts and the canonical encoding shared by every Agora crate; no I/O.
