//! `r3s-server token create|list|delete`: bootstrap tokens for joining, managed through the API
//! with the admin kubeconfig (as `k3s token` does), stored as described in [`super::bootstrap`].
//!
//! `create` prints the full join token `K10<CA hash>::<id>.<secret>` (the hash of the CA in the
//! kubeconfig, which is the bundle the server serves at `/cacerts`); `--ttl 0` never expires.

use std::path::PathBuf;

use base64::Engine;
use clap::{Parser, Subcommand};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use rand::Rng;

use super::bootstrap::{self, NAMESPACE, SECRET_TYPE};

/// Manage bootstrap tokens for joining agents.
#[derive(Parser, Debug)]
#[command(name = "r3s-server token", max_term_width = 100)]
pub struct TokenCli {
    /// The admin kubeconfig to reach the server with
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "R3S_KUBECONFIG_OUTPUT",
        default_value = "/etc/r3s/r3s.yaml"
    )]
    pub kubeconfig: PathBuf,

    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a bootstrap token and print the join token that carries it
    Create {
        /// How long the token is valid (e.g. 24h, 90m, 1h30m); 0 never expires
        #[arg(long, default_value = "24h", value_parser = parse_ttl)]
        ttl: std::time::Duration,
        /// A note kept with the token
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List bootstrap tokens
    List,
    /// Delete bootstrap tokens by id (or full token)
    Delete {
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

/// Why a token command failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenCommandError {
    #[error("{path}: {reason}", path = path.display())]
    Kubeconfig { path: PathBuf, reason: String },
    #[error("{0}")]
    Api(#[from] kube::Error),
    #[error("building the Secret: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0:?} is not a bootstrap token id (6 characters of [a-z0-9])")]
    BadId(String),
}

/// Parses `24h`, `90m`, `45s`, `1h30m`, `2d` or `0`.
pub fn parse_ttl(s: &str) -> Result<std::time::Duration, String> {
    if s == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    let mut total = 0u64;
    let mut number = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            'd' => 86_400,
            'h' => 3_600,
            'm' => 60,
            's' => 1,
            _ => return Err(format!("{s:?}: unknown unit {c:?} (use d, h, m or s)")),
        };
        let n: u64 = number
            .parse()
            .map_err(|_| format!("{s:?}: expected a number before {c:?}"))?;
        total = total.saturating_add(n.saturating_mul(unit));
        number.clear();
    }
    if !number.is_empty() || total == 0 {
        return Err(format!("{s:?}: expected a duration like 24h or 1h30m"));
    }
    Ok(std::time::Duration::from_secs(total))
}

/// Runs the command, printing its result on stdout.
pub async fn run(cli: TokenCli) -> Result<(), TokenCommandError> {
    let (client, ca_pem) = client(&cli.kubeconfig).await?;
    let secrets: Api<Secret> = Api::namespaced(client, NAMESPACE);
    match cli.command {
        TokenCommand::Create { ttl, description } => {
            let id = random_token_part(6);
            let secret = random_token_part(16);
            let expiration = (!ttl.is_zero()).then(|| {
                let at = chrono::Utc::now()
                    + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::days(365 * 100));
                at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            });
            let object = bootstrap::secret(&id, &secret, expiration.as_deref(), &description);
            let object: Secret = serde_json::from_value(object)?;
            secrets.create(&PostParams::default(), &object).await?;
            let hash = r3s_agent::join::token::ca_hash(&ca_pem);
            println!("K10{hash}::{id}.{secret}");
        }
        TokenCommand::List => {
            println!("{:<24} {:<22} DESCRIPTION", "TOKEN", "EXPIRES");
            for s in secrets.list(&ListParams::default()).await? {
                if s.type_.as_deref() != Some(SECRET_TYPE) {
                    continue;
                }
                let value = serde_json::to_value(&s).unwrap_or_default();
                let field = |k: &str| bootstrap::field(&value, k).unwrap_or_default();
                let expires = match field("expiration") {
                    e if e.is_empty() => "<never>".to_owned(),
                    e => e,
                };
                println!(
                    "{:<24} {:<22} {}",
                    format!("{}.{}", field("token-id"), field("token-secret")),
                    expires,
                    field("description")
                );
            }
        }
        TokenCommand::Delete { ids } => {
            for given in ids {
                let id = given.split_once('.').map_or(given.as_str(), |(id, _)| id);
                let id = id.rsplit("::").next().unwrap_or(id);
                if id.len() != 6
                    || !id
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                {
                    return Err(TokenCommandError::BadId(given.clone()));
                }
                secrets
                    .delete(&bootstrap::secret_name(id), &DeleteParams::default())
                    .await?;
                println!("bootstrap token {id:?} deleted");
            }
        }
    }
    Ok(())
}

fn random_token_part(len: usize) -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

/// An admin client and the server CA (PEM bytes) from the kubeconfig.
async fn client(path: &std::path::Path) -> Result<(kube::Client, Vec<u8>), TokenCommandError> {
    let err = |reason: String| TokenCommandError::Kubeconfig {
        path: path.to_owned(),
        reason,
    };
    let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| err(e.to_string()))?;
    let ca_pem = kc
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.certificate_authority_data.as_ref())
        .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
        .ok_or_else(|| err("no certificate-authority-data in its first cluster".into()))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .map_err(|e| err(e.to_string()))?;
    let client = kube::Client::try_from(config).map_err(|e| err(e.to_string()))?;
    Ok((client, ca_pem))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("24h").unwrap().as_secs(), 86_400);
        assert_eq!(parse_ttl("1h30m").unwrap().as_secs(), 5_400);
        assert_eq!(parse_ttl("0").unwrap().as_secs(), 0);
        assert!(parse_ttl("10").is_err());
        assert!(parse_ttl("5w").is_err());
        assert!(parse_ttl("h").is_err());
        let id = random_token_part(6);
        assert!(r3s_agent::join::token::is_bootstrap_token(&format!(
            "{id}.{}",
            random_token_part(16)
        )));
    }
}
