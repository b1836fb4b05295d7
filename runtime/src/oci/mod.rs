//! OCI runtime specs written on the host: the defaults `vmrun` uses when it is not
//! given a bundle ([`defaults`]). The agent receives the finished spec as JSON.

pub mod defaults;
