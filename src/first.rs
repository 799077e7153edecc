//! The first of several futures to finish (a tiny `select_all`: the inputs are few).

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

/// Polls every future in `futures` until one finishes; returns its output and its index. An
/// empty list never finishes.
pub async fn first_of<F: Future + Unpin>(
    futures: impl IntoIterator<Item = F>,
) -> (F::Output, usize) {
    let mut futures: Vec<F> = futures.into_iter().collect();
    std::future::poll_fn(|cx| {
        for (i, f) in futures.iter_mut().enumerate() {
            if let Poll::Ready(out) = Pin::new(f).poll(cx) {
                return Poll::Ready((out, i));
            }
        }
        Poll::Pending
    })
    .await
}
