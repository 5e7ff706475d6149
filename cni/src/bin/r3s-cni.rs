//! `r3s-cni`: the CNI spec 1.0 plugin over r3s's pod network library, for runtimes other than the
//! r3s agent (which calls the same library in-process). Reads the network configuration on stdin
//! and `CNI_*` from the environment; prints the result JSON, or the error JSON and exits 1.

use std::io::{Read, Write};

use r3s_cni::plugin::{self, CNI_VERSION, CniEnv, PluginError};

fn main() {
    let env = CniEnv::from_env();
    let mut stdin = Vec::new();
    let outcome = if env.command == "VERSION" {
        Ok(Some(plugin::version_json()))
    } else {
        match std::io::stdin().read_to_end(&mut stdin) {
            Err(e) => Err(PluginError::new(5, "reading stdin", e.to_string())),
            Ok(_) => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| PluginError::new(5, "starting the runtime", e.to_string()))
                .and_then(|rt| rt.block_on(plugin::execute(&env, &stdin))),
        }
    };
    // Errors are answered in the version the caller spoke when it is readable.
    let version = serde_json::from_slice::<serde_json::Value>(&stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(|v| v.as_str())
                .map(String::from)
        })
        .unwrap_or_else(|| CNI_VERSION.to_string());
    let mut out = std::io::stdout().lock();
    let code = match outcome {
        Ok(Some(value)) => {
            let _ = writeln!(out, "{value}");
            0
        }
        Ok(None) => 0,
        Err(e) => {
            let _ = writeln!(out, "{}", e.to_json(&version));
            1
        }
    };
    let _ = out.flush();
    std::process::exit(code);
}
