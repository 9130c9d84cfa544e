//! Copying a store into a new one: how a master that outgrew one machine
//! keeps its history when it moves from its embedded store to PostgreSQL
//! (`halite-master copy-store --to postgres://…`, the master stopped).
//!
//! Every keyspace is copied row for row, so keys keep their order and
//! meaning (jids, stream ids, request and rollout numbers). Then the
//! target's id sequence is moved past every id the source handed out, so
//! that a stream entry, event or delivery stored later never reuses one.
//! A target that already holds jobs or stream entries is refused: the
//! copy is for a new database, before any master runs on it (a master
//! following its stream would otherwise take the copied entries for new).

use super::*;

/// Rows written per statement (one round trip on PostgreSQL).
const ROWS_PER_WRITE: usize = 1_000;

impl Store {
    /// Every keyspace, in [`SPACES`] order.
    fn every_space(&self) -> [&Space; 23] {
        [
            &self.jobs,
            &self.returns,
            &self.events,
            &self.minions,
            &self.presence,
            &self.checks,
            &self.deploys,
            &self.tokens,
            &self.audit,
            &self.bus,
            &self.minion_jobs,
            &self.fun_jobs,
            &self.job_stream,
            &self.batches,
            &self.requests,
            &self.schedules,
            &self.outbox,
            &self.triggers,
            &self.rollouts,
            &self.active_rollouts,
            &self.keys,
            &self.users,
            &self.rollout_actions,
        ]
    }

    /// Copies every record of this store into `target`, a new store;
    /// answers how many rows each keyspace had. Blocks for as long as the
    /// copy takes (about a thousand rows per round trip on PostgreSQL).
    pub fn copy_into(&self, target: &Store) -> Result<Vec<(&'static str, usize)>, StoreError> {
        for space in [&target.jobs, &target.bus] {
            if space.iter().next().is_some() {
                return Err(StoreError::TargetNotEmpty {
                    space: space.name(),
                });
            }
        }
        let mut copied = Vec::new();
        for (from, to) in self.every_space().into_iter().zip(target.every_space()) {
            let mut rows = Vec::with_capacity(ROWS_PER_WRITE);
            let mut count = 0;
            for item in from.iter() {
                let (key, value) = item.map_err(failed("read a row to copy"))?;
                rows.push((key.to_vec(), value.to_vec()));
                if rows.len() == ROWS_PER_WRITE {
                    count += write_rows(to, &mut rows)?;
                }
            }
            count += write_rows(to, &mut rows)?;
            copied.push((from.name(), count));
        }
        // Every id so far (a stream entry is one past an id handed out) is
        // below the next one plus one.
        let next = self.engine.generate_id().map_err(failed("read the ids"))? + 1;
        target
            .engine
            .raise_ids(next)
            .map_err(failed("move the ids past the copied ones"))?;
        target.flush()?;
        Ok(copied)
    }
}

/// `halite-master copy-store`: copies the embedded store the master's
/// config names (`data_dir/store`, the master stopped: sled locks it)
/// into the new PostgreSQL store at `to`, made and migrated as a master
/// would. Blocks.
pub fn copy_store(
    from: &StoreLocation,
    to: &str,
) -> Result<Vec<(&'static str, usize)>, StoreError> {
    let StoreLocation::Sled(dir) = from else {
        return Err(StoreError::Location {
            location: from.to_string(),
            reason: "the config's store is already PostgreSQL: copy-store copies the \
                     embedded store (leave `store` out of the config while copying)",
        });
    };
    let to = match StoreLocation::parse(Some(to), dir)? {
        StoreLocation::Postgres(url) => url,
        StoreLocation::Sled(_) => unreachable!("a given location is never the default"),
    };
    Store::open(dir)?.copy_into(&Store::connect(&to)?)
}

/// Writes `rows` (absent keys only) and empties it; how many there were.
fn write_rows(to: &Space, rows: &mut Vec<(Vec<u8>, Vec<u8>)>) -> Result<usize, StoreError> {
    if rows.is_empty() {
        return Ok(0);
    }
    to.insert_new_many(rows)
        .map_err(failed("write copied rows"))?;
    let count = rows.len();
    rows.clear();
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use halite_model::BusEntry;

    #[test]
    fn a_sled_store_copied_into_postgresql_reads_back_whole_and_its_ids_go_on() {
        let [sled, postgres] = each_engine();
        let source = sled.open();
        let jid = Jid::from_unix_us(1_700_000_000_000_000);
        let mut stored = super::super::tests::job(&jid);
        stored.record.fun = "git_deploy.deploy".into();
        source.put_job(&stored).unwrap();
        // More rows than one write: the chunks add up.
        let mut streamed = 0;
        for n in 0..(ROWS_PER_WRITE + 5) {
            streamed = source
                .publish(BusEntry {
                    id: 0,
                    kind: "job/event".into(),
                    at: n as u64,
                    jid: Some(jid.clone()),
                    minion: None,
                    data: Value::Null,
                })
                .unwrap();
        }
        source.flush().unwrap();

        let target = postgres.open();
        let copied = source.copy_into(&target).unwrap();
        let names: Vec<&str> = copied.iter().map(|(name, _)| *name).collect();
        assert_eq!(names, SPACES);
        let rows = |name| copied.iter().find(|(n, _)| *n == name).unwrap().1;
        assert_eq!(rows("jobs"), 1);
        assert_eq!(rows("bus"), ROWS_PER_WRITE + 5);

        let job = target.job(&jid).unwrap().expect("the job, copied");
        assert_eq!(job.record.fun, "git_deploy.deploy");
        assert_eq!(job.envelope, stored.envelope);
        let listed = target.jobs(10, None).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].record.jid, jid);
        assert_eq!(target.stream_head().unwrap(), streamed);
        // The next entry goes after the copied ones.
        let next = target
            .publish(BusEntry {
                id: 0,
                kind: "job/event".into(),
                at: 0,
                jid: None,
                minion: None,
                data: Value::Null,
            })
            .unwrap();
        assert!(next > streamed, "{next} after {streamed}");

        // Only into a new store.
        assert!(matches!(
            source.copy_into(&target),
            Err(StoreError::TargetNotEmpty { .. })
        ));
    }

    #[test]
    fn every_keyspace_is_copied() {
        let [sled, _] = each_engine();
        let store = sled.open();
        let names: Vec<&str> = store.every_space().iter().map(|s| s.name()).collect();
        assert_eq!(names, SPACES);
    }
}
