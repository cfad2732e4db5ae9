//! How core and driver errors become gRPC statuses. One table for every service.

use tessera_core::CoreError;
use tonic::{Code, Status};

use crate::driver::DriverError;

pub fn to_status(e: CoreError) -> Status {
    let code = match &e {
        CoreError::InvalidArgument(_) => Code::InvalidArgument,
        CoreError::NotFound(_) => Code::NotFound,
        CoreError::AlreadyExists(_) => Code::AlreadyExists,
        CoreError::FailedPrecondition(_) => Code::FailedPrecondition,
        CoreError::ResourceExhausted(_) => Code::ResourceExhausted,
        CoreError::Aborted(_) => Code::Aborted,
        CoreError::Unavailable(_) => Code::Unavailable,
        CoreError::DeadlineExceeded(_) => Code::DeadlineExceeded,
        CoreError::Storage(_) => Code::Internal,
    };
    Status::new(code, e.to_string())
}

pub fn driver_status(e: DriverError) -> Status {
    Status::unavailable(format!("{e}; retry against a running node"))
}

/// Reads an enum field, refusing numbers the contract does not define.
pub fn enum_field<T>(field: &str, value: i32, parse: impl Fn(i32) -> Option<T>, what: &str) -> Result<T, Status> {
    parse(value).ok_or_else(|| Status::invalid_argument(format!("{field}: {value} is not a valid {what}")))
}
