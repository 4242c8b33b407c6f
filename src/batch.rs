//! "Take one, then whatever else is already waiting": the batching step shared by the
//! group-commit writer, the point readers and the completer. None of them ever waits to fill a
//! batch: a lone request goes straight through, and under load one batch forms while the
//! previous one is being written.

use tokio::sync::mpsc;

/// A channel receiver that can hand over an item without waiting.
pub trait Waiting<T> {
    /// The next item already in the channel, if any.
    fn take_waiting(&mut self) -> Option<T>;
}

impl<T> Waiting<T> for mpsc::Receiver<T> {
    fn take_waiting(&mut self) -> Option<T> {
        self.try_recv().ok()
    }
}

impl<T> Waiting<T> for mpsc::UnboundedReceiver<T> {
    fn take_waiting(&mut self) -> Option<T> {
        self.try_recv().ok()
    }
}

/// Appends `first`, then every item already waiting in `rx`, until `batch` holds `max`.
pub fn gather<T>(first: T, rx: &mut impl Waiting<T>, max: usize, batch: &mut Vec<T>) {
    batch.push(first);
    while batch.len() < max {
        match rx.take_waiting() {
            Some(item) => batch.push(item),
            None => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn takes_what_waits_up_to_the_maximum_and_never_waits_for_more() {
        let (tx, mut rx) = mpsc::channel(16);
        for i in 1..=5 {
            tx.send(i).await.unwrap();
        }
        let mut batch = Vec::new();
        gather(0, &mut rx, 4, &mut batch);
        assert_eq!(batch, [0, 1, 2, 3]);
        batch.clear();
        gather(10, &mut rx, 4, &mut batch);
        assert_eq!(batch, [10, 4, 5], "returns with what there is");
    }
}
