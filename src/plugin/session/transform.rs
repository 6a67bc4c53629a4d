//! `transform` over a broadcast's selected pods: each plugin of the chain
//! in turn, called once per group of pods that share a copy of the
//! request (0.2.0), or once per pod (0.1.0), under the failure policy of
//! [`Session::call`].

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use super::{PluginFailure, Session, lend_targets};
use crate::plugin::bindings::{
    self, Contract, Hooks, InvalidOutput, LentHeaders, Patcher, RequestHead, RequestPatch,
};
use crate::vocabulary::delivery::PodRequest;
use crate::vocabulary::target::Target;

impl Session {
    /// Runs every `transform` hook in chain order over the selected
    /// `targets`, and returns each one's copy of `request`, in order.
    ///
    /// Each plugin sees the copies as the plugins before it patched them.
    /// The pods that share a copy (the same `Arc`) are one group: a 0.2.0
    /// plugin is called once per group, which is one call until a plugin
    /// gives pods different copies; a 0.1.0 plugin once per pod. Pods of a
    /// group given equal patches keep sharing one copy (an empty patch
    /// keeps the copy as it was), so a later plugin still sees them as one
    /// group; so do the pods of a call answered with a single patch, which
    /// applies to all of them. Every call runs under the plugin's limits
    /// and failure policy.
    pub fn transform(
        &mut self,
        head: &RequestHead,
        request: &Arc<PodRequest>,
        targets: &[Target],
    ) -> Result<Vec<Arc<PodRequest>>, PluginFailure> {
        let mut copies = vec![Arc::clone(request); targets.len()];
        let transformers: Vec<usize> = (0..self.members.len())
            .filter(|&index| {
                let plugin = &self.members[index].link.plugin;
                plugin.hooks.contains(Hooks::TRANSFORM)
            })
            .collect();
        if transformers.is_empty() || targets.is_empty() {
            return Ok(copies);
        }
        let addresses = self.take_addresses(targets);
        let result = {
            let labels: Vec<_> = targets.iter().map(Target::labels).collect();
            let records = lend_targets(targets, &addresses, &labels);
            transformers
                .into_iter()
                .try_for_each(|index| self.transform_with(index, head, &records, &mut copies))
        };
        self.addresses = addresses;
        result.map(|()| copies)
    }

    /// Runs member `index`'s `transform` over every group of `copies`
    /// (`records` are the targets, lent), replacing each copy by its
    /// patched one. Stops early when the member fails open.
    fn transform_with(
        &mut self,
        index: usize,
        head: &RequestHead,
        records: &[bindings::v0_2::Target<'_>],
        copies: &mut [Arc<PodRequest>],
    ) -> Result<(), PluginFailure> {
        let per_call = match self.members[index].link.plugin.contract {
            Contract::V0_1 => 1,
            Contract::V0_2 => usize::MAX,
        };
        for group in groups(copies) {
            let current = Arc::clone(&copies[group[0]]);
            let lent = LentHeaders::new(&current.headers);
            let headers = lent.lend();
            let request = head.request(&current, &headers);
            let mut patcher = Patcher::new(&current);
            for positions in group.chunks(per_call.min(group.len())) {
                // One group of every pod (the usual case) lends them all.
                let lent_targets: Cow<'_, [_]> = if positions.len() == records.len() {
                    Cow::Borrowed(records)
                } else {
                    positions.iter().map(|&at| records[at].clone()).collect()
                };
                let count = positions.len();
                let patched = self.call(
                    index,
                    Hooks::TRANSFORM,
                    "transform",
                    |plugin, store| plugin.call_transform(store, request.clone(), &lent_targets),
                    |mut patches: Vec<RequestPatch>| {
                        if patches.len() == 1 && count > 1 {
                            // One patch for every target of the call: applied
                            // once, and the pods keep sharing one copy.
                            let copy = patcher.apply(patches.remove(0))?;
                            return Ok(vec![copy; count]);
                        }
                        if patches.len() != count {
                            return Err(InvalidOutput(format!(
                                "{} patches for {count} targets (transform returns one patch per target, in the same order, or one patch for all of them)",
                                patches.len()
                            )));
                        }
                        patches
                            .into_iter()
                            .map(|patch| patcher.apply(patch))
                            .collect::<Result<Vec<_>, _>>()
                    },
                )?;
                // Failed open: the plugin is out, the copies stay as they are.
                let Some(patched) = patched else {
                    return Ok(());
                };
                for (&at, copy) in positions.iter().zip(patched) {
                    copies[at] = copy;
                }
            }
        }
        Ok(())
    }
}

/// The positions of `copies` grouped by the copy they share (the same
/// `Arc`), each group in order, the groups in order of their first pod.
fn groups(copies: &[Arc<PodRequest>]) -> Vec<Vec<usize>> {
    let Some(first) = copies.first() else {
        return Vec::new();
    };
    // Most broadcasts have one copy for every pod: no hashing then.
    if copies.iter().all(|copy| Arc::ptr_eq(copy, first)) {
        return vec![(0..copies.len()).collect()];
    }
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut group_of: HashMap<*const PodRequest, usize> = HashMap::new();
    for (at, copy) in copies.iter().enumerate() {
        let next = groups.len();
        let group = *group_of.entry(Arc::as_ptr(copy)).or_insert(next);
        if group == next {
            groups.push(Vec::new());
        }
        groups[group].push(at);
    }
    groups
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http::{HeaderMap, Method};

    use super::groups;
    use crate::vocabulary::delivery::PodRequest;

    fn copy(path: &str) -> Arc<PodRequest> {
        Arc::new(PodRequest {
            method: Method::POST,
            path_and_query: path.into(),
            headers: HeaderMap::new(),
            body: bytes::Bytes::new(),
        })
    }

    #[test]
    fn pods_are_grouped_by_the_copy_they_share_in_order_of_their_first_pod() {
        let (a, b) = (copy("/"), copy("/"));
        assert_eq!(groups(&[]), Vec::<Vec<usize>>::new());
        assert_eq!(groups(&[a.clone(), a.clone(), a.clone()]), [vec![0, 1, 2]]);
        // Equal content is not the same copy: grouping is by `Arc`.
        let mixed = [b.clone(), a.clone(), b.clone(), copy("/c"), a.clone()];
        assert_eq!(groups(&mixed), [vec![0, 2], vec![1, 4], vec![3]]);
    }
}
