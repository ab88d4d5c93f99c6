//! Registration with kubelet over its `kubelet.sock`, and gRPC channels over
//! unix sockets.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::proto::registration_client::RegistrationClient;
use crate::proto::RegisterRequest;

/// kubelet's registration socket in its device-plugins dir.
pub const KUBELET_SOCKET: &str = "kubelet.sock";
/// The device plugin API version we speak.
pub const API_VERSION: &str = "v1beta1";
/// How long one Register call may take.
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connect to {path}")]
    Connect {
        path: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("register {resource} with kubelet: {status}")]
    Register {
        resource: String,
        status: Box<tonic::Status>,
    },
    #[error("register {resource} with kubelet: no answer within {REGISTER_TIMEOUT:?}")]
    Timeout { resource: String },
}

pub type Result<T> = std::result::Result<T, Error>;

/// A gRPC channel to the server on unix socket `path`.
pub async fn unix_channel(path: &Path) -> Result<Channel> {
    let socket: PathBuf = path.to_path_buf();
    let cerr = |source| Error::Connect {
        path: path.display().to_string(),
        source,
    };
    // The URI is required by the API but unused: the connector dials the socket.
    Endpoint::from_static("http://localhost")
        .connect_timeout(Duration::from_secs(2))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
        }))
        .await
        .map_err(cerr)
}

/// Registers `resource`, served on socket file `endpoint` (a name in kubelet's
/// device-plugins dir), with the kubelet listening on `kubelet_socket`.
pub async fn register(kubelet_socket: &Path, endpoint: &str, resource: &str) -> Result<()> {
    let call = async {
        let channel = unix_channel(kubelet_socket).await?;
        RegistrationClient::new(channel)
            .register(RegisterRequest {
                version: API_VERSION.to_string(),
                endpoint: endpoint.to_string(),
                resource_name: resource.to_string(),
                options: Some(crate::server::options()),
            })
            .await
            .map_err(|status| Error::Register {
                resource: resource.to_string(),
                status: Box::new(status),
            })?;
        Ok(())
    };
    tokio::time::timeout(REGISTER_TIMEOUT, call)
        .await
        .map_err(|_| Error::Timeout {
            resource: resource.to_string(),
        })?
}
