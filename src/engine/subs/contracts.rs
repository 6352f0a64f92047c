//! Data requests wait for their contract: IB wants the full contract (exchange and all), so
//! the engine resolves each conId before its first request.

use super::{SubKey, SubscriptionManager};

impl SubscriptionManager {
    /// From now on a data request waits until [`SubscriptionManager::contract_ready`] names
    /// its conId: IB wants the full contract (exchange and all) in a data request, so the
    /// engine resolves each conId first. New conIds are announced through
    /// [`SubscriptionManager::take_contract_need`]. (Off by default for callers that have
    /// no contracts to resolve.)
    pub fn require_contracts(&mut self) {
        self.require_contracts = true;
    }

    /// A conId a new subscription needs resolved, oldest first.
    pub fn take_contract_need(&mut self) -> Option<u32> {
        self.contract_needs.pop_front()
    }

    /// The full contract of `con_id` is known: its queued requests may go.
    pub fn contract_ready(&mut self, con_id: u32) {
        self.contracts_ready.insert(con_id);
    }

    /// IB cannot resolve `con_id`: every subscription to it is rejected with `code` (a
    /// subscription record says so). Returns how many were rejected.
    pub fn contract_unresolvable(&mut self, con_id: u32, code: i32) -> usize {
        self.contracts_ready.remove(&con_id);
        self.contract_needs.retain(|c| *c != con_id);
        let keys: Vec<SubKey> = self
            .subs
            .keys()
            .filter(|k| k.con_id == con_id)
            .copied()
            .collect();
        for k in &keys {
            self.reject(*k, code);
        }
        keys.len()
    }

    pub(super) fn waits_for_contract(&self, con_id: u32) -> bool {
        self.require_contracts && !self.contracts_ready.contains(&con_id)
    }
}
