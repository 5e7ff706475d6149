//! The `User-Agent` r3s's components send to the API server. Upstream derives a write's default
//! field manager from the product name before the first `/`, so these names are what
//! `kubectl get -o yaml --show-managed-fields` shows as the managers of r3s's own writes: the same
//! as on k3s (`kube-controller-manager`, `kube-scheduler`, `kubelet`), not `unknown`.

/// The Kubernetes version r3s serves and reports, as upstream components put it in their agent.
pub const KUBERNETES_VERSION: &str = "v1.32.0+r3s";

/// `<product>/<version> (<os>/<arch>) r3s/<crate version>`, upstream's layout.
pub fn user_agent(product: &str) -> String {
    format!(
        "{product}/{KUBERNETES_VERSION} ({}/{}) r3s/{}",
        std::env::consts::OS,
        go_arch(),
        env!("CARGO_PKG_VERSION")
    )
}

/// Go's name for this architecture, as Kubernetes reports it.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_product_comes_first() {
        let ua = super::user_agent("kubelet");
        assert!(ua.starts_with("kubelet/v1.32.0+r3s ("), "{ua}");
        assert_eq!(ua.split('/').next(), Some("kubelet"));
    }
}
