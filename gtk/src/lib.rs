//! Library side of `matrix-link-gtk`, free of GTK types: the command line ([`cli`], from which
//! the man page is generated) and the texts shown for the daemon's named errors ([`errors`]).

pub mod cli;
pub mod errors;
