//! Platforms (`os/architecture[/variant]`, e.g. `linux/arm/v7`) and the choice of a manifest from
//! an OCI image index or Docker manifest list.
//!
//! Matching follows containerd's rules for the cases r3s runs on: os and architecture must be equal
//! (after normalising aliases such as `aarch64` → `arm64`, `x86_64` → `amd64`); for `arm` the variant
//! must match, an index entry without variant counting as `v7`; for `arm64` a missing variant means
//! `v8`. If no entry matches, the pull fails naming the platforms the image offers.

use std::fmt;

/// Why a platform string is invalid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlatformError {
    #[error("invalid platform {0:?}: expected os/architecture[/variant], e.g. linux/arm/v7")]
    Invalid(String),
}

/// An OS/architecture/variant triple.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// Parses `os/arch[/variant]`.
    pub fn parse(s: &str) -> Result<Self, PlatformError> {
        let parts: Vec<&str> = s.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) || !(2..=3).contains(&parts.len()) {
            return Err(PlatformError::Invalid(s.to_string()));
        }
        Ok(Self::new(parts[0], parts[1], parts.get(2).copied()))
    }

    /// Builds a normalised platform.
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        let (architecture, variant) = normalize_arch(architecture, variant);
        Self {
            os: os.to_ascii_lowercase(),
            architecture,
            variant,
        }
    }

    /// The platform this process runs on. 32-bit ARM is assumed to be v7 (Raspberry Pi 2/3 with a
    /// 32-bit OS); use [`Platform::parse`] to override (e.g. `linux/arm/v6` for a Pi Zero).
    pub fn host() -> Self {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "arm" => "arm",
            "x86" => "386",
            "riscv64" => "riscv64",
            "powerpc64" => "ppc64le",
            "s390x" => "s390x",
            other => other,
        };
        Self::new(std::env::consts::OS, arch, None)
    }

    /// Whether an index entry for `(os, arch, variant)` runs on this platform.
    pub fn matches(&self, os: &str, architecture: &str, variant: Option<&str>) -> bool {
        let other = Self::new(os, architecture, variant);
        other.os == self.os
            && other.architecture == self.architecture
            && other.variant == self.variant
    }
}

fn normalize_arch(arch: &str, variant: Option<&str>) -> (String, Option<String>) {
    let arch = arch.to_ascii_lowercase();
    let variant = variant
        .map(str::to_ascii_lowercase)
        .filter(|v| !v.is_empty());
    match arch.as_str() {
        "x86_64" | "x86-64" | "amd64" => ("amd64".into(), None),
        "aarch64" | "arm64" => match variant.as_deref() {
            None | Some("8") | Some("v8") => ("arm64".into(), Some("v8".into())),
            _ => ("arm64".into(), variant),
        },
        "armhf" => ("arm".into(), Some("v7".into())),
        "armel" => ("arm".into(), Some("v6".into())),
        "arm" => match variant.as_deref() {
            None | Some("7") | Some("v7") => ("arm".into(), Some("v7".into())),
            Some("5") => ("arm".into(), Some("v5".into())),
            Some("6") => ("arm".into(), Some("v6".into())),
            Some("8") => ("arm".into(), Some("v8".into())),
            _ => ("arm".into(), variant),
        },
        "i386" | "i686" => ("386".into(), None),
        _ => (arch, variant),
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        match &self.variant {
            // arm64's implied v8 is not worth printing.
            Some(v) if !(self.architecture == "arm64" && v == "v8") => write!(f, "/{v}"),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching() {
        let p = |s| Platform::parse(s).expect("valid");
        for (node, os, arch, variant, want) in [
            ("linux/arm64", "linux", "arm64", None, true),
            ("linux/arm64", "linux", "arm64", Some("v8"), true),
            ("linux/arm64", "linux", "aarch64", None, true),
            ("linux/arm/v7", "linux", "arm", Some("v7"), true),
            ("linux/arm/v7", "linux", "arm", None, true),
            ("linux/arm/v7", "linux", "arm", Some("v6"), false),
            ("linux/arm/v6", "linux", "arm", Some("v7"), false),
            ("linux/amd64", "linux", "amd64", None, true),
            ("linux/amd64", "linux", "arm64", None, false),
            ("linux/amd64", "windows", "amd64", None, false),
        ] {
            assert_eq!(
                p(node).matches(os, arch, variant),
                want,
                "{node} vs {os}/{arch}/{variant:?}"
            );
        }
        assert_eq!(p("linux/arm64").to_string(), "linux/arm64");
        assert_eq!(p("linux/arm").to_string(), "linux/arm/v7");
        assert!(Platform::parse("linux").is_err());
        assert!(Platform::parse("linux//v7").is_err());
    }
}
