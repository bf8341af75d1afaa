//! The one tokio runtime every node of this library runs on.
//!
//! uniffi's own tokio support (`async_runtime = "tokio"`) enters a small fallback runtime only
//! while the foreign side polls a call; a node's background work (sync, pairing, events) must
//! go on between calls, so it is spawned here and the calls await its join handles.

use std::future::Future;
use std::sync::OnceLock;

use crate::error::ErrandError;

static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

/// The runtime, started on first use. Two workers: a phone node is mostly idle, and its
/// blocking work (database reads and writes) goes to tokio's blocking pool.
pub(crate) fn get() -> &'static tokio::runtime::Runtime {
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("errand-ffi")
            .enable_all()
            .build()
            // Without threads or a timer there is nothing this library could do; uniffi turns
            // the panic into an error of the call that tried.
            .expect("cannot start the errand runtime")
    })
}

/// Runs `fut` on the runtime and waits for it. A panic inside becomes [`ErrandError::Internal`].
pub(crate) async fn spawn<T, F>(fut: F) -> Result<T, ErrandError>
where
    T: Send + 'static,
    F: Future<Output = Result<T, ErrandError>> + Send + 'static,
{
    get().spawn(fut).await.map_err(joined)?
}

/// Runs blocking `f` (database work) on the runtime's blocking pool and waits for it.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, ErrandError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, ErrandError> + Send + 'static,
{
    get().spawn_blocking(f).await.map_err(joined)?
}

fn joined(e: tokio::task::JoinError) -> ErrandError {
    if e.is_panic() {
        let payload = e.into_panic();
        let text = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_owned());
        ErrandError::Internal(format!("errand failed internally: {text}"))
    } else {
        ErrandError::Internal("the call was cancelled".to_owned())
    }
}
