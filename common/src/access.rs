//! Who may call what: roles, identities and bearer tokens. Pure rules; the
//! controller reads the caller's certificate or token record and asks
//! [`authorize`].
//!
//! Roles (DESIGN.md, "Who may do what"):
//! - `minion`: report an attempt's completion or failure (claims and
//!   heartbeats go through etcd leases);
//! - `reader`: list and show tables, segments, tasks, the watermark, reports;
//! - `operator`: a reader that may also pause, resume, run now, retry and
//!   reset with `append`;
//! - `admin`: an operator that may also add, update and delete tables,
//!   purge, reset with `flush`, register segments and manage tokens.
//!
//! A minion may do nothing but report attempts, and no person's role may
//! report an attempt (a reader cannot fail a running attempt; neither can an
//! admin, who has `reset` for that).

use rustls::pki_types::{CertificateDer, ServerName};
use std::fmt;

/// A caller's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A minion process.
    Minion,
    /// Reads everything, changes nothing.
    Reader,
    /// Reads, pauses, resumes, runs now, retries, resets with append.
    Operator,
    /// Everything a person may do.
    Admin,
}

impl Role {
    /// Every role, for messages.
    pub const ALL: [Role; 4] = [Role::Minion, Role::Reader, Role::Operator, Role::Admin];

    /// Parses `minion`, `reader`, `operator` or `admin` (any case).
    ///
    /// Errors: names the value and the roles.
    pub fn parse(s: &str) -> Result<Role, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "minion" => Ok(Role::Minion),
            "reader" => Ok(Role::Reader),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            _ => Err(format!("role '{s}': expected one of minion, reader, operator, admin")),
        }
    }

    /// Whether a caller with this role may make a call that needs `need`.
    pub fn allows(self, need: Role) -> bool {
        match need {
            Role::Minion => self == Role::Minion,
            Role::Reader => matches!(self, Role::Reader | Role::Operator | Role::Admin),
            Role::Operator => matches!(self, Role::Operator | Role::Admin),
            Role::Admin => self == Role::Admin,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Minion => "minion",
            Role::Reader => "reader",
            Role::Operator => "operator",
            Role::Admin => "admin",
        })
    }
}

/// How a caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// A client certificate whose name is mapped to a role.
    Certificate,
    /// A bearer token.
    Token,
    /// Nothing: the server runs with `--insecure` and trusts every caller.
    Insecure,
}

/// A caller: a name (a certificate's DNS name, a token's name and id) and its role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Who, as it appears in the audit log: `cert:r2o-minion`, `token:alice (t-1a2b3c)`.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// How it was identified.
    pub via: Via,
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No credentials, or credentials that prove nothing (gRPC `UNAUTHENTICATED`).
    Unauthenticated(String),
    /// A known caller whose role does not allow the call (gRPC `PERMISSION_DENIED`).
    Denied(String),
}

/// Decides whether `who` may make `call`, which needs `need`. `None` is a
/// caller with neither a mapped certificate nor a valid token; a caller
/// [`Via::Insecure`] (a server run with `--insecure`, where plain text has
/// no identities) may make every call, minions' reports included.
///
/// Errors: [`Refusal::Unauthenticated`] without an identity,
/// [`Refusal::Denied`] naming the call, the caller's role and the role needed.
pub fn authorize(who: Option<&Identity>, call: &str, need: Role) -> Result<(), Refusal> {
    let Some(who) = who else {
        return Err(Refusal::Unauthenticated(format!(
            "{call} needs role {need}: present a client certificate whose name is mapped to a role, \
             or a bearer token (R2O_TOKEN or --token-file)"
        )));
    };
    if who.via == Via::Insecure || who.role.allows(need) {
        Ok(())
    } else {
        Err(Refusal::Denied(format!("{call} needs role {need}; {} has role {}", who.name, who.role)))
    }
}

/// Parses `--cert-roles`: comma-separated `name=role` pairs, where `name` is
/// a DNS name in the client certificate's subject alternative names
/// (`r2o-minion=minion,ops.example.com=operator`).
///
/// Errors: a pair without `=`, a name that is not a DNS name, an unknown role.
pub fn parse_cert_roles(s: &str) -> Result<Vec<(String, Role)>, String> {
    let mut out = Vec::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, role) = pair
            .split_once('=')
            .ok_or_else(|| format!("cert role '{pair}': expected name=role (r2o-minion=minion)"))?;
        let name = name.trim().to_ascii_lowercase();
        if name.contains('*') || ServerName::try_from(name.clone()).is_err() {
            return Err(format!("cert role '{pair}': '{name}' is not a DNS name (no wildcards)"));
        }
        out.push((name, Role::parse(role).map_err(|e| format!("cert role '{pair}': {e}"))?));
    }
    Ok(out)
}

/// The identity a verified client certificate proves: the first `name`
/// of `roles` that the certificate is valid for (a DNS name in its subject
/// alternative names), or `None`. The chain and validity were checked in
/// the TLS handshake; this only names the caller.
pub fn cert_identity(cert: &CertificateDer<'_>, roles: &[(String, Role)]) -> Option<Identity> {
    let ee = webpki::EndEntityCert::try_from(cert).ok()?;
    roles.iter().find_map(|(name, role)| {
        let sn = ServerName::try_from(name.as_str()).ok()?;
        ee.verify_is_valid_for_subject_name(&sn).ok().map(|_| Identity {
            name: format!("cert:{name}"),
            role: *role,
            via: Via::Certificate,
        })
    })
}

/// Prefix of every bearer token (a token is `r2o_<id>_<secret>`).
pub const TOKEN_PREFIX: &str = "r2o_";

/// Splits a bearer token into its id (the key of its record) and checks its
/// shape: `r2o_` + 12 lowercase hex digits + `_` + 64 lowercase hex digits.
pub fn token_id(token: &str) -> Option<&str> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    (hex(id, 12) && hex(secret, 64)).then_some(id)
}

/// A new token from 6 + 32 random bytes: (id, token). Shown once; only its
/// [`token_hash`] is stored.
pub fn new_token(id_bytes: [u8; 6], secret: [u8; 32]) -> (String, String) {
    let id = hex(&id_bytes);
    let token = format!("{TOKEN_PREFIX}{id}_{}", hex(&secret));
    (id, token)
}

/// SHA-256 of the whole token, lowercase hex: what a token record stores.
pub fn token_hash(token: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref())
}

/// Lowercase hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|x| format!("{x:02x}")).collect()
}

/// Whether `token` is the one whose hash is `stored` (compared in constant time).
pub fn token_matches(token: &str, stored: &str) -> bool {
    let got = token_hash(token);
    got.len() == stored.len() && got.bytes().zip(stored.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(role: Role) -> Identity {
        Identity { name: "x".into(), role, via: Via::Token }
    }

    #[test]
    fn roles_nest_except_minion() {
        use Role::*;
        let table = [
            // (caller, need, allowed)
            (Admin, Admin, true),
            (Admin, Operator, true),
            (Admin, Reader, true),
            (Admin, Minion, false),
            (Operator, Admin, false),
            (Operator, Operator, true),
            (Operator, Reader, true),
            (Operator, Minion, false),
            (Reader, Operator, false),
            (Reader, Reader, true),
            (Reader, Minion, false),
            (Minion, Reader, false),
            (Minion, Admin, false),
            (Minion, Minion, true),
        ];
        for (caller, need, allowed) in table {
            assert_eq!(caller.allows(need), allowed, "{caller} for {need}");
        }
    }

    #[test]
    fn refusals_name_the_call_and_the_roles() {
        match authorize(Some(&who(Role::Reader)), "PauseTable", Role::Operator) {
            Err(Refusal::Denied(m)) => {
                assert!(m.contains("PauseTable needs role operator") && m.contains("reader"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        match authorize(None, "DeleteTable", Role::Admin) {
            Err(Refusal::Unauthenticated(m)) => assert!(m.contains("DeleteTable needs role admin"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(authorize(Some(&who(Role::Admin)), "DeleteTable", Role::Admin), Ok(()));
        // --insecure: no identities, every call allowed (a minion's report too)
        let open = Identity { name: "insecure".into(), role: Role::Admin, via: Via::Insecure };
        assert_eq!(authorize(Some(&open), "CompleteTask", Role::Minion), Ok(()));
        assert!(authorize(Some(&who(Role::Admin)), "CompleteTask", Role::Minion).is_err());
    }

    #[test]
    fn cert_roles_parse_and_refuse_bad_pairs() {
        let r = parse_cert_roles("r2o-minion=minion, Ops.Example.com=operator,").unwrap();
        assert_eq!(r, vec![("r2o-minion".into(), Role::Minion), ("ops.example.com".into(), Role::Operator)]);
        assert!(parse_cert_roles("r2o-minion").unwrap_err().contains("expected name=role"));
        assert!(parse_cert_roles("*.example.com=admin").unwrap_err().contains("no wildcards"));
        assert!(parse_cert_roles("a=root").unwrap_err().contains("expected one of minion, reader, operator, admin"));
    }

    #[test]
    fn tokens_have_a_shape_and_match_only_their_hash() {
        let (id, token) = new_token([1, 2, 3, 4, 5, 6], [7; 32]);
        assert_eq!(id, "010203040506");
        assert_eq!(token_id(&token), Some("010203040506"));
        let h = token_hash(&token);
        assert_eq!(h.len(), 64);
        assert!(token_matches(&token, &h));
        let (_, other) = new_token([1, 2, 3, 4, 5, 6], [8; 32]);
        assert!(!token_matches(&other, &h));
        assert_eq!(token_id("r2o_0102_abc"), None);
        assert_eq!(token_id(&token.to_uppercase()), None);
        assert_eq!(token_id(&format!("{token}0")), None);
    }
}
