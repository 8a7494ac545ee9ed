//! The controller's gate: who is calling (a client certificate mapped to a
//! role, or a bearer token whose record is in etcd), whether the call is
//! allowed ([`r2o_common::access::authorize`], pure), and the audit record
//! of every admin and operator action. The rules are in
//! [`r2o_common::access`]; this module only reads and writes.

use r2o_common::access::{authorize, cert_identity, token_id, token_matches, Identity, Refusal, Role, Via};
use r2o_common::kv::Kv;
use r2o_common::meta::{get_record, now_ms, range_records, AuditRecord, Keys, TokenRecord};
use tonic::{Request, Status};

use crate::error::{ControllerError, Result};
use crate::protocol;

/// How callers are identified.
#[derive(Debug, Clone)]
pub enum Policy {
    /// `--insecure`: every call is allowed (plain text has no identities);
    /// callers are recorded as `insecure` with the admin role.
    Open,
    /// TLS: certificates named in `cert_roles` and bearer tokens; nobody else.
    Roles {
        /// `name=role` pairs of `--cert-roles`, first match wins.
        cert_roles: Vec<(String, Role)>,
    },
}

/// Identifies callers and records what they did.
#[derive(Clone)]
pub struct Gate {
    kv: Kv,
    keys: Keys,
    policy: Policy,
}

/// The token of an `authorization` value: `Bearer <token>`, or `Basic
/// <base64 of user:token>` (a browser's login prompt; the user name is not
/// checked). `None` for anything else. Pure.
pub fn bearer_or_basic(value: &str) -> Option<String> {
    use base64::Engine;
    if let Some(t) = value.strip_prefix("Bearer ") {
        return Some(t.trim().to_string());
    }
    let b64 = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (_, password) = text.split_once(':')?;
    Some(password.trim().to_string())
}

fn refused(r: Refusal) -> Status {
    match r {
        Refusal::Unauthenticated(m) => Status::unauthenticated(m),
        Refusal::Denied(m) => Status::permission_denied(m),
    }
}

impl Gate {
    /// A gate over the install's token records.
    pub fn new(kv: Kv, keys: Keys, policy: Policy) -> Gate {
        Gate { kv, keys, policy }
    }

    /// Who is calling: the bearer token when the call carries one (it must
    /// be valid), else the client certificate when its name is mapped,
    /// else nobody.
    ///
    /// Errors: `UNAUTHENTICATED` for a malformed, unknown or revoked token;
    /// `UNAVAILABLE` when etcd cannot be read.
    pub async fn identify<T>(&self, req: &Request<T>) -> std::result::Result<Option<Identity>, Status> {
        let auth = req.metadata().get("authorization").map(|v| v.to_str().unwrap_or_default());
        self.identify_with(auth, req.peer_certs()).await
    }

    /// [`Gate::identify`] from an `authorization` value and the peer's
    /// certificates: `Bearer <token>`, or (for a browser) `Basic` whose
    /// password is the token (the user name is not checked).
    ///
    /// Errors: as [`Gate::identify`].
    pub async fn identify_with(
        &self,
        authorization: Option<&str>,
        peer_certs: Option<std::sync::Arc<Vec<tonic::transport::CertificateDer<'static>>>>,
    ) -> std::result::Result<Option<Identity>, Status> {
        let cert_roles = match &self.policy {
            Policy::Open => {
                return Ok(Some(Identity { name: "insecure".into(), role: Role::Admin, via: Via::Insecure }))
            }
            Policy::Roles { cert_roles } => cert_roles,
        };
        if let Some(auth) = authorization {
            let token = bearer_or_basic(auth).unwrap_or_default();
            let token = token.as_str();
            let Some(id) = token_id(token) else {
                return Err(Status::unauthenticated(
                    "bearer token: not an r2o token (expected r2o_<12 hex>_<64 hex>, as `r2o token create` prints)",
                ));
            };
            let rec = get_record::<TokenRecord>(&self.kv, &self.keys.token(id))
                .await
                .map_err(|e| Status::unavailable(format!("reading token {id}: {e}")))?;
            return match rec {
                Some((rec, _)) if token_matches(token, &rec.sha256) => {
                    Ok(Some(Identity { name: format!("token:{} ({id})", rec.name), role: rec.role, via: Via::Token }))
                }
                _ => Err(Status::unauthenticated(format!("token {id}: unknown or revoked"))),
            };
        }
        Ok(peer_certs.and_then(|certs| certs.first().and_then(|leaf| cert_identity(leaf, cert_roles))))
    }

    /// [`Gate::check`] for an HTTP request (the status page): the caller,
    /// if it may make `call`, which needs `need`.
    ///
    /// Errors: as [`Gate::check`].
    pub async fn check_http(
        &self,
        authorization: Option<&str>,
        peer_certs: Option<std::sync::Arc<Vec<tonic::transport::CertificateDer<'static>>>>,
        call: &str,
        need: Role,
    ) -> std::result::Result<Identity, Status> {
        let who = self.identify_with(authorization, peer_certs).await?;
        authorize(who.as_ref(), call, need).map_err(refused)?;
        Ok(who.expect("authorize refuses no identity"))
    }

    /// The caller, if it may make `call` (which needs `need`).
    ///
    /// Errors: `UNAUTHENTICATED` without usable credentials,
    /// `PERMISSION_DENIED` naming the role needed.
    pub async fn check<T>(&self, req: &Request<T>, call: &str, need: Role) -> std::result::Result<Identity, Status> {
        let who = self.identify(req).await?;
        authorize(who.as_ref(), call, need).map_err(refused)?;
        Ok(who.expect("authorize refuses no identity"))
    }

    /// Records an admin or operator action and logs it. A failed write is
    /// logged, not returned: the action itself already happened.
    pub async fn record(
        &self,
        who: &Identity,
        call: &str,
        table: &str,
        detail: &str,
        outcome: std::result::Result<(), String>,
    ) {
        let rec = AuditRecord {
            at_ms: now_ms(),
            who: who.name.clone(),
            role: who.role,
            call: call.into(),
            table: table.into(),
            detail: detail.into(),
            outcome: crate::error::bounded_message(outcome.clone().err().unwrap_or_else(|| "ok".into())),
        };
        tracing::info!(who = %rec.who, role = %rec.role, call, table, detail, outcome = %rec.outcome, "audit");
        let nonce = format!("{:08x}", rand::random::<u32>());
        if let Err(e) = protocol::audit(&self.keys, &rec, &nonce).apply(&self.kv).await {
            tracing::warn!(error = %e, call, table, "cannot record the audit entry");
        }
    }

    /// Creates a token for `name` with `role`: its record (the hash only)
    /// goes to etcd, the token itself is returned once.
    ///
    /// Errors: etcd errors; an id taken (random 48 bits: retried by the caller).
    pub async fn create_token(&self, name: &str, role: Role, by: &Identity) -> Result<(TokenRecord, String)> {
        if name.trim().is_empty() || name.len() > 200 {
            return Err(ControllerError::Invalid(format!(
                "token name '{name}': expected 1 to 200 characters naming its holder"
            )));
        }
        let (id, token) = r2o_common::access::new_token(rand::random(), rand::random());
        let rec = TokenRecord {
            id: id.clone(),
            name: name.trim().into(),
            role,
            sha256: r2o_common::access::token_hash(&token),
            created_ms: now_ms(),
            created_by: by.name.clone(),
        };
        if !protocol::add_token(&self.keys, &rec).apply(&self.kv).await? {
            return Err(ControllerError::Conflict(format!("token id {id} is taken; create it again")));
        }
        Ok((rec, token))
    }

    /// Revokes token `id` (deletes its record): its next call is refused.
    ///
    /// Errors: `NotFound` for an unknown id; etcd errors.
    pub async fn revoke_token(&self, id: &str) -> Result<TokenRecord> {
        let Some((rec, kv)) = get_record::<TokenRecord>(&self.kv, &self.keys.token(id)).await? else {
            return Err(ControllerError::NotFound(format!("token '{id}'")));
        };
        if !protocol::revoke_token(&self.keys, id, kv.mod_revision).apply(&self.kv).await? {
            return Err(ControllerError::Conflict(format!("token {id} changed meanwhile; revoke it again")));
        }
        Ok(rec)
    }

    /// Every token record (hashes, never tokens).
    pub async fn tokens(&self) -> Result<Vec<TokenRecord>> {
        Ok(range_records::<TokenRecord>(&self.kv, &self.keys.tokens()).await?.into_iter().map(|(r, _)| r).collect())
    }

    /// The newest `limit` audit records, oldest first.
    pub async fn audit_log(&self, limit: usize) -> Result<Vec<AuditRecord>> {
        let all = range_records::<AuditRecord>(&self.kv, &self.keys.audits()).await?;
        let skip = all.len().saturating_sub(limit);
        Ok(all.into_iter().skip(skip).map(|(r, _)| r).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_comes_as_bearer_or_as_basics_password() {
        use base64::Engine;
        let t = "r2o_0123456789ab_".to_string() + &"f".repeat(64);
        assert_eq!(bearer_or_basic(&format!("Bearer {t}")), Some(t.clone()));
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("anyone:{t}"));
        assert_eq!(bearer_or_basic(&format!("Basic {basic}")), Some(t));
        assert_eq!(bearer_or_basic("Basic !!!"), None);
        assert_eq!(bearer_or_basic("Digest x"), None);
        let no_colon = base64::engine::general_purpose::STANDARD.encode("token-only");
        assert_eq!(bearer_or_basic(&format!("Basic {no_colon}")), None);
    }
}
