//! Library side of `matrix-link-gtk`, free of GTK types: the command line ([`cli`], from which
//! the man page is generated), the texts shown for the daemon's named errors ([`errors`]) and
//! sandboxed apps' remembered answers in the permission store ([`answers`]).

pub mod answers;
pub mod cli;
pub mod errors;
