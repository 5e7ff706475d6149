//! The r3s image service: pulls OCI images from registries into a content-addressed store and unpacks
//! their layers into snapshots that containers mount with overlayfs (containerd's image path in k3s).
//!
//! Not built yet: see issue 5.
