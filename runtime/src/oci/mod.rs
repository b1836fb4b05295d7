//! OCI runtime specs on the host: the defaults `vmrun` writes when it is not given a
//! bundle ([`defaults`]), and the checks of a bundle it is given ([`bundle`]). The
//! agent receives the finished spec as JSON.

pub mod bundle;
pub mod defaults;
