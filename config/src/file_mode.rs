//! Unix permission bits written in octal, as `--write-kubeconfig-mode 0600` takes them.
//!
//! Only the nine permission bits are accepted: setuid, setgid and sticky bits make no sense on a
//! kubeconfig, and k3s users write `644` or `0644`, both of which parse here.

use std::fmt;
use std::str::FromStr;

/// Permission bits, at most `0o777`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileMode(u32);

/// Why a mode string was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FileModeError(String);

impl FileMode {
    pub fn bits(&self) -> u32 {
        self.0
    }
}

impl FromStr for FileMode {
    type Err = FileModeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s.strip_prefix("0o").unwrap_or(s);
        if digits.is_empty()
            || digits.len() > 4
            || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
        {
            return Err(FileModeError(format!(
                "{s:?} is not an octal file mode (like 0600 or 644)"
            )));
        }
        let bits = u32::from_str_radix(digits, 8)
            .map_err(|_| FileModeError(format!("{s:?} is not an octal file mode")))?;
        if bits > 0o777 {
            return Err(FileModeError(
                "only permission bits (up to 0777) are allowed".to_string(),
            ));
        }
        Ok(Self(bits))
    }
}

impl fmt::Display for FileMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_octal() {
        assert_eq!("0600".parse::<FileMode>().unwrap().bits(), 0o600);
        assert_eq!("644".parse::<FileMode>().unwrap().bits(), 0o644);
        assert_eq!("0o640".parse::<FileMode>().unwrap().to_string(), "0640");
        for bad in ["", "0800", "rw-r--r--", "4755", "12345"] {
            assert!(bad.parse::<FileMode>().is_err(), "{bad}");
        }
    }
}
