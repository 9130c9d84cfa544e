//! Release requests, by id (big-endian, so in the order they were made).
//! Written durably: a request is what someone approved.

use halite_model::ReleaseRequest;

use super::*;

impl Store {
    /// The next request id (1, 2, ...; never reused, also after a restart).
    pub fn next_request_id(&self) -> Result<u64, StoreError> {
        let last = self
            .requests
            .last()
            .map_err(sled_err("read requests"))?
            .and_then(|(key, _)| <[u8; 8]>::try_from(key.as_ref()).ok())
            .map_or(0, u64::from_be_bytes);
        Ok(last + 1)
    }

    /// Stores (or replaces) a request, durably.
    pub fn put_request(&self, request: &ReleaseRequest) -> Result<(), StoreError> {
        self.requests
            .insert(request.id.to_be_bytes(), to_bytes("request", request)?)
            .map_err(sled_err("write request"))?;
        self.flush()
    }

    /// The request with this id.
    pub fn request(&self, id: u64) -> Result<Option<ReleaseRequest>, StoreError> {
        match self
            .requests
            .get(id.to_be_bytes())
            .map_err(sled_err("read request"))?
        {
            Some(bytes) => Ok(Some(from_bytes("request", &bytes)?)),
            None => Ok(None),
        }
    }

    /// Requests newest first, at most `limit`, those `keep` says yes to.
    pub fn requests(
        &self,
        limit: usize,
        keep: impl Fn(&ReleaseRequest) -> bool,
    ) -> Result<Vec<ReleaseRequest>, StoreError> {
        let mut out = Vec::new();
        for item in self.requests.iter().rev() {
            if out.len() >= limit {
                break;
            }
            let (_, bytes) = item.map_err(sled_err("scan requests"))?;
            let request: ReleaseRequest = from_bytes("request", &bytes)?;
            if keep(&request) {
                out.push(request);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use halite_model::RequestKind;

    #[test]
    fn requests_keep_their_order_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
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
        let store = Store::open(dir.path()).unwrap();
        let all = store.requests(10, |_| true).unwrap();
        assert_eq!(all.iter().map(|r| r.id).collect::<Vec<_>>(), [3, 2, 1]);
        assert_eq!(store.request(2).unwrap().unwrap().at_creation(), 2);
        assert_eq!(store.next_request_id().unwrap(), 4);
    }
}
