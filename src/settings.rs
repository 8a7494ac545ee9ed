//! Settings from a TOML file. Every process setting is a flag with an
//! `R2O_*` environment variable (clap); a settings file given with
//! `--settings FILE` or `R2O_SETTINGS` fills in what neither sets. Keys are
//! the settings' names in snake case (`lease_ttl_secs`, `etcd`, `store`);
//! an unknown key is an error that names it and lists the known ones.

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;

/// `R2O_*` variables every subcommand knows, by snake-case key.
fn known_settings(cmd: &clap::Command) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for sub in cmd.get_subcommands() {
        for arg in sub.get_arguments() {
            if let Some(env) = arg.get_env().and_then(|e| e.to_str()) {
                if let Some(key) = env.strip_prefix("R2O_") {
                    out.insert(key.to_ascii_lowercase(), env.to_string());
                }
            }
        }
    }
    out.remove("settings");
    out
}

/// `R2O_*` variables that are not settings of a subcommand but are known:
/// the settings file itself, logging, fault injection for tests, and the
/// test and quickstart scripts' own knobs.
const OTHER_VARIABLES: [&str; 5] =
    ["R2O_SETTINGS", "R2O_LOG", "R2O_LOG_FORMAT", "R2O_FAULT_STORE", "R2O_FAULT_DELTA_HOLD"];
const OTHER_PREFIXES: [&str; 5] = ["R2O_TEST_", "R2O_KEEP_TEST_DIR", "R2O_SOAK_SECS", "R2O_QS_", "R2O_HISTORY_"];

/// Refuses `R2O_*` environment variables that name no setting (a typo
/// would otherwise be ignored silently).
fn check_environment(known: &BTreeMap<String, String>) -> Result<()> {
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with("R2O_")
            || known.values().any(|v| v == name)
            || OTHER_VARIABLES.contains(&name)
            || OTHER_PREFIXES.iter().any(|p| name.starts_with(p))
        {
            continue;
        }
        bail!(
            "unknown setting {name} in the environment: expected one of {}",
            known.values().map(String::as_str).chain(OTHER_VARIABLES).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(())
}

/// Refuses unknown `R2O_*` variables, then finds the settings file on the
/// command line or in `R2O_SETTINGS` and exports its values as `R2O_*`
/// variables that are not set already.
pub fn apply_settings_file(cmd: &clap::Command) -> Result<()> {
    check_environment(&known_settings(cmd))?;
    let args: Vec<String> = std::env::args().collect();
    let from_flag = args.iter().enumerate().find_map(|(i, a)| {
        a.strip_prefix("--settings=")
            .map(str::to_string)
            .or_else(|| (a == "--settings").then(|| args.get(i + 1).cloned()).flatten())
    });
    let Some(path) = from_flag.or_else(|| std::env::var("R2O_SETTINGS").ok()) else {
        return Ok(());
    };
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading settings file {path}"))?;
    for (env, value) in parse_settings(&text, &known_settings(cmd)).with_context(|| format!("settings file {path}"))? {
        if std::env::var_os(&env).is_none() {
            std::env::set_var(env, value);
        }
    }
    Ok(())
}

/// Parses a settings file into (`R2O_*` variable, value) pairs.
fn parse_settings(text: &str, known: &BTreeMap<String, String>) -> Result<Vec<(String, String)>> {
    let table: toml::Table = toml::from_str(text).context("not valid TOML")?;
    let mut out = Vec::new();
    for (key, value) in table {
        let Some(env) = known.get(&key) else {
            bail!("unknown setting '{key}': expected one of {}", known.keys().cloned().collect::<Vec<_>>().join(", "));
        };
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(a) => {
                let mut items = Vec::new();
                for v in a {
                    match v {
                        toml::Value::String(s) => items.push(s),
                        toml::Value::Integer(i) => items.push(i.to_string()),
                        other => bail!("setting '{key}' holds {other:?}: expected a list of strings"),
                    }
                }
                items.join(",")
            }
            other => bail!("setting '{key}' = {other:?}: expected a string, a whole number, a boolean or a list"),
        };
        out.push((env.clone(), value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn reads_known_settings_and_rejects_unknown_ones() {
        let known = known_settings(&crate::Cli::command());
        assert_eq!(known.get("lease_ttl_secs").map(String::as_str), Some("R2O_LEASE_TTL_SECS"));
        assert!(known.contains_key("etcd") && known.contains_key("slots") && known.contains_key("http_listen"));
        let got = parse_settings(
            "etcd = [\"http://a:2379\", \"http://b:2379\"]\nlease_ttl_secs = 7\nstore = \"file:///x\"\n",
            &known,
        )
        .unwrap();
        assert!(got.contains(&("R2O_ETCD".into(), "http://a:2379,http://b:2379".into())));
        assert!(got.contains(&("R2O_LEASE_TTL_SECS".into(), "7".into())));
        assert!(check_environment(&known).is_ok(), "the test environment holds no unknown R2O_ variable");
        let err = parse_settings("lease_ttl = 7\n", &known).unwrap_err().to_string();
        assert!(err.contains("unknown setting 'lease_ttl'") && err.contains("lease_ttl_secs"), "{err}");
    }
}
