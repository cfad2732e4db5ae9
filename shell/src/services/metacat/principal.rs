//! Who is calling: the `x-principal-bin` header (a serialized `PrincipalContext`) and the
//! `x-correlation-id` header. All parsing of the caller's identity is here, so verifying the
//! context's `signature` can be added in one place.
//!
//! `TenantService` is administrative: callers need the `platform-admin` role or the
//! `tenants:admin` permission, except that any caller may read its own tenant.

use prost::Message;
use tessera_proto::ai::floedb::metacat::common::PrincipalContext;
use tonic::Status;
use tonic::metadata::{MetadataMap, MetadataValue};

pub const PRINCIPAL_HEADER: &str = "x-principal-bin";
pub const CORRELATION_HEADER: &str = "x-correlation-id";
pub const ADMIN_ROLE: &str = "platform-admin";
pub const ADMIN_PERMISSION: &str = "tenants:admin";

#[derive(Debug, Clone)]
pub struct Caller {
    pub tenant: String,
    pub subject: String,
    pub admin: bool,
    pub correlation_id: Option<String>,
}

impl Caller {
    /// Reads the caller from request headers: no principal is UNAUTHENTICATED, an unreadable
    /// one INVALID_ARGUMENT.
    pub fn from_metadata(md: &MetadataMap) -> Result<Caller, Status> {
        let correlation_id = md
            .get(CORRELATION_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 128)
            .map(str::to_owned);
        let raw = md.get_bin(PRINCIPAL_HEADER).ok_or_else(|| {
            Status::unauthenticated(format!("missing {PRINCIPAL_HEADER}: send the caller's PrincipalContext"))
        })?;
        let bytes = raw
            .to_bytes()
            .map_err(|e| Status::invalid_argument(format!("{PRINCIPAL_HEADER}: not valid base64: {e}")))?;
        let p = PrincipalContext::decode(bytes.as_ref())
            .map_err(|e| Status::invalid_argument(format!("{PRINCIPAL_HEADER}: not a PrincipalContext: {e}")))?;
        let admin = p.roles.iter().any(|r| r == ADMIN_ROLE) || p.permissions.iter().any(|r| r == ADMIN_PERMISSION);
        if p.tenant_id.is_empty() && !admin {
            return Err(Status::invalid_argument(format!("{PRINCIPAL_HEADER}: tenant_id is empty")));
        }
        let correlation_id = correlation_id.or((!p.correlation_id.is_empty()).then(|| p.correlation_id.clone()));
        tracing::debug!(tenant = %p.tenant_id, subject = %p.subject, correlation_id = ?correlation_id, "metacat call");
        Ok(Caller { tenant: p.tenant_id, subject: p.subject, admin, correlation_id })
    }

    /// A tenant-scoped caller (every service but TenantService).
    pub fn tenant_scoped(md: &MetadataMap) -> Result<Caller, Status> {
        let c = Self::from_metadata(md)?;
        if c.tenant.is_empty() {
            return Err(Status::invalid_argument(format!("{PRINCIPAL_HEADER}: tenant_id is empty")));
        }
        Ok(c)
    }

    pub fn require_admin(&self) -> Result<(), Status> {
        if self.admin {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "tenant administration needs the {ADMIN_ROLE:?} role or the {ADMIN_PERMISSION:?} permission"
            )))
        }
    }

    /// Copies the correlation id into response metadata.
    pub fn echo(&self, md: &mut MetadataMap) {
        if let Some(c) = &self.correlation_id
            && let Ok(v) = MetadataValue::try_from(c.as_str())
        {
            md.insert(CORRELATION_HEADER, v);
        }
    }
}
