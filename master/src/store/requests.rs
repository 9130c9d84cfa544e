//! Release requests, by id (big-endian, so in the order they were made).
//! Written durably: a request is what someone approved.

use halite_model::ReleaseRequest;

use super::*;

impl Store {
    fn numbered_requests(&self) -> numbered::Numbered<'_> {
        numbered::Numbered {
            tree: &self.requests,
            what: "request",
        }
    }

    /// The next request id (1, 2, ...; never reused, also after a restart).
    pub fn next_request_id(&self) -> Result<u64, StoreError> {
        self.numbered_requests().next_id()
    }

    /// Stores (or replaces) a request, durably.
    pub fn put_request(&self, request: &ReleaseRequest) -> Result<(), StoreError> {
        self.numbered_requests().put(request.id, request)?;
        self.flush()
    }

    /// The request with this id.
    pub fn request(&self, id: u64) -> Result<Option<ReleaseRequest>, StoreError> {
        self.numbered_requests().get(id)
    }

    /// Requests newest first, at most `limit`, those `keep` says yes to.
    pub fn requests(
        &self,
        limit: usize,
        keep: impl Fn(&ReleaseRequest) -> bool,
    ) -> Result<Vec<ReleaseRequest>, StoreError> {
        self.numbered_requests().newest(limit, keep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use halite_model::RequestKind;

    #[test]
    fn requests_keep_their_order_and_survive_a_reopen() {
        for fresh in crate::store::each_engine() {
            let store = fresh.open();
            for n in 1..=3 {
                let id = store.next_request_id().unwrap();
                assert_eq!(id, n);
                let request = ReleaseRequest::new(
                    id,
                    "shop",
                    "production",
                    RequestKind::Deploy,
                    serde_json::Map::new(),
                    None,
                    "why",
                    "dev",
                    n,
                );
                store.put_request(&request).unwrap();
            }
            drop(store);
            let store = fresh.open();
            let all = store.requests(10, |_| true).unwrap();
            assert_eq!(all.iter().map(|r| r.id).collect::<Vec<_>>(), [3, 2, 1]);
            assert_eq!(store.request(2).unwrap().unwrap().at_creation(), 2);
            assert_eq!(store.next_request_id().unwrap(), 4);
        }
    }
}
