//! SCARECRO's way of telling which address a received MQTT topic belongs to.
//!
//! SCARECRO's MQTT carrier (`src/carriers/mqtt.py`) subscribes to `<topic>/#`
//! for each receive address and keeps one table, topic → address, built by
//! `util.forward_backward_map_additional_info` from the carrier's send
//! addresses and then its receive addresses; an address listed later wins a
//! topic, the topic keeping its first place in the table. A message goes to
//! the address of exactly its topic, or else (`check_topic_map`) to the last
//! address in the table whose topic occurs anywhere in the message's topic.
//! Gateways rely on that: a cloud publishing on `firmware_image/gateway-17`
//! reaches the address whose topic is `firmware_image`.

use std::collections::HashMap;

use gator_ota_settings::TopicRoute;

/// The topic → address table of one MQTT carrier.
#[derive(Debug, Clone, Default)]
pub struct TopicMap {
    /// (topic, address) in table order.
    entries: Vec<(String, String)>,
    /// topic → index into `entries`.
    index: HashMap<String, usize>,
}

impl TopicMap {
    /// The table for `routes`, or `None` when there are none (then receive
    /// topics are plain MQTT filters).
    pub fn from_routes(routes: &[TopicRoute]) -> Option<Self> {
        if routes.is_empty() {
            return None;
        }
        let mut map = Self::default();
        for r in routes {
            match map.index.get(&r.topic) {
                Some(&i) => map.entries[i].1 = r.address.clone(),
                None => {
                    map.index.insert(r.topic.clone(), map.entries.len());
                    map.entries.push((r.topic.clone(), r.address.clone()));
                }
            }
        }
        Some(map)
    }

    /// The address a message on `topic` belongs to, if any.
    pub fn address_for(&self, topic: &str) -> Option<&str> {
        if let Some(&i) = self.index.get(topic) {
            return Some(&self.entries[i].1);
        }
        self.entries
            .iter()
            .rfind(|(t, _)| topic.contains(t.as_str()))
            .map(|(_, a)| a.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> TopicMap {
        let routes: Vec<TopicRoute> = pairs
            .iter()
            .map(|(address, topic)| TopicRoute {
                address: address.to_string(),
                topic: topic.to_string(),
            })
            .collect();
        TopicMap::from_routes(&routes).unwrap()
    }

    #[test]
    fn an_exact_topic_wins() {
        let m = map(&[("fw", "firmware_image"), ("img", "image")]);
        assert_eq!(m.address_for("firmware_image"), Some("fw"));
        assert_eq!(m.address_for("image"), Some("img"));
    }

    #[test]
    fn otherwise_the_last_topic_contained_in_it_wins() {
        let m = map(&[("fw", "firmware_image"), ("img", "image"), ("other", "x")]);
        assert_eq!(
            m.address_for("firmware_image/gateway-17"),
            Some("img"),
            "both occur in it; the later entry wins, as in SCARECRO"
        );
        assert_eq!(m.address_for("a/firmware_image/b"), Some("img"));
        assert_eq!(m.address_for("nothing/here"), None);
    }

    #[test]
    fn a_repeated_topic_keeps_its_place_and_takes_the_later_address() {
        let m = map(&[("send_a", "a"), ("send_b", "b"), ("recv_a", "a")]);
        assert_eq!(m.address_for("a"), Some("recv_a"));
        // Table order is a, b: for "b/a" both occur and b is later.
        assert_eq!(m.address_for("b/a"), Some("send_b"));
    }

    #[test]
    fn no_routes_means_no_table() {
        assert!(TopicMap::from_routes(&[]).is_none());
    }
}
