//! `cellctl load`: open-loop traffic through the router.
