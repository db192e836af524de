//! What a connection does with each packet once it is open: the QoS flows in both
//! directions (PUBLISH/PUBACK/PUBREC/PUBREL/PUBCOMP with their packet ids and the in-flight
//! window), SUBSCRIBE/UNSUBSCRIBE with retained messages, DISCONNECT, the resend after a
//! reconnect, and [`Conn::pump`], which moves queued deliveries into the outgoing buffer.
//! No I/O here: the handlers write packets into the connection's buffer, and the loop in
//! the parent module reads and writes the socket. Table tests in `conn/tests.rs`.

use super::*;

impl Conn {
    pub(super) fn handle(&mut self, packet: Packet) -> Option<End> {
        match packet {
            Packet::Publish(p) => return self.on_publish(p),
            Packet::PubAck(a) => self.on_puback(a.packet_id),
            Packet::PubRec(r) => self.on_pubrec(r),
            Packet::PubRel(r) => self.on_pubrel(r.packet_id),
            Packet::PubComp(c) => self.on_pubcomp(c.packet_id),
            Packet::Subscribe(s) => self.on_subscribe(s),
            Packet::Unsubscribe(u) => self.on_unsubscribe(u),
            Packet::PingReq => self.send(&Packet::PingResp),
            Packet::Disconnect(d) => return Some(self.on_disconnect(d)),
            Packet::Auth(_) => {
                self.disconnect(reason::PROTOCOL_ERROR);
                return Some(End::Abnormal("AUTH without enhanced authentication".into()));
            }
            other => {
                // The codec refuses server-only packets; anything else here is a bug.
                self.disconnect(reason::PROTOCOL_ERROR);
                return Some(End::Abnormal(format!(
                    "unexpected {:?}",
                    other.packet_type()
                )));
            }
        }
        None
    }

    pub(super) fn on_publish(&mut self, p: Publish) -> Option<End> {
        let shared = self.ctx.shared.clone();
        let settings = self.ctx.settings.clone();
        shared
            .stats
            .messages_received
            .fetch_add(1, Ordering::Relaxed);
        // Topic alias (MQTT 5.0 §3.3.2.3.4).
        let topic: Arc<str> = match p.properties.topic_alias {
            Some(alias) if alias > settings.topic_alias_maximum => {
                self.disconnect(reason::TOPIC_ALIAS_INVALID);
                return Some(End::Abnormal(format!("topic alias {alias} out of range")));
            }
            Some(alias) if p.topic.is_empty() => match self.aliases.get(&alias) {
                Some(t) => t.clone(),
                None => {
                    self.disconnect(reason::PROTOCOL_ERROR);
                    return Some(End::Abnormal(format!("unknown topic alias {alias}")));
                }
            },
            Some(alias) => {
                let t: Arc<str> = p.topic.as_str().into();
                self.aliases.insert(alias, t.clone());
                t
            }
            None => p.topic.as_str().into(),
        };
        let unacked = self.pending_acks.len() + lock(&self.cell.state).incoming_qos2.len();
        if p.qos != QoS::AtMostOnce && unacked >= usize::from(settings.receive_maximum) {
            self.disconnect(reason::RECEIVE_MAXIMUM_EXCEEDED);
            return Some(End::Abnormal("receive maximum exceeded".into()));
        }
        let allowed = shared.access().may(
            self.username.as_deref(),
            &self.client_id,
            Action::Publish,
            &topic,
        ) && !topic.starts_with("$SYS");
        let packet_id = p.packet_id.unwrap_or(0);
        if p.qos == QoS::ExactlyOnce && lock(&self.cell.state).incoming_qos2.contains(&packet_id) {
            // A resent QoS 2 PUBLISH we already have: acknowledge, do not deliver twice.
            self.push_ack(packet_id, QoS::ExactlyOnce, reason::SUCCESS, None);
            return None;
        }
        let mut pending = None;
        let mut code = reason::SUCCESS;
        // Clients may not publish into the broker's own `$SYS` tree.
        if allowed {
            let expires_at = p
                .properties
                .message_expiry_interval
                .map(|s| Instant::now() + Duration::from_secs(u64::from(s)));
            let msg = Arc::new(Message {
                topic,
                payload: p.payload,
                qos: p.qos,
                retain: p.retain,
                properties: Message::forwarded_properties(&p.properties),
                expires_at,
                publisher: Some(self.client_id.clone()),
            });
            let mut p = shared.route(msg);
            if let Some(c) = p.take_congestion(shared.bounds.stall_timeout) {
                match &mut self.throttle {
                    Some(t) => t.merge(c),
                    None => self.throttle = Some(c),
                }
            }
            pending = (!p.is_empty()).then_some(p);
        } else {
            shared
                .stats
                .publishes_denied
                .fetch_add(1, Ordering::Relaxed);
            self.log_denied("publish", &topic);
            code = reason::NOT_AUTHORIZED;
        }
        match p.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.push_ack(packet_id, QoS::AtLeastOnce, code, pending),
            QoS::ExactlyOnce => {
                if code < 0x80 {
                    lock(&self.cell.state).incoming_qos2.insert(packet_id);
                }
                self.push_ack(packet_id, QoS::ExactlyOnce, code, pending);
            }
        }
        None
    }

    /// Queues a PUBACK / PUBREC, keeping the order PUBLISHes arrived in (MQTT-4.6.0-2/-3).
    pub(super) fn push_ack(
        &mut self,
        packet_id: u16,
        qos: QoS,
        reason: u8,
        pending: Option<Pending>,
    ) {
        let code = if self.version.is_v5() { reason } else { 0 };
        self.pending_acks.push_back(PendingAck {
            packet_id,
            qos,
            reason: code,
            pending,
        });
        self.flush_acks();
    }

    pub(super) fn flush_acks(&mut self) {
        while self
            .pending_acks
            .front()
            .is_some_and(|p| p.pending.is_none())
        {
            let Some(p) = self.pending_acks.pop_front() else {
                break;
            };
            let resp = PubResponse {
                packet_id: p.packet_id,
                reason_code: p.reason,
                properties: Properties::default(),
            };
            let packet = if p.qos == QoS::AtLeastOnce {
                Packet::PubAck(resp)
            } else {
                Packet::PubRec(resp)
            };
            self.send(&packet);
        }
    }

    pub(super) fn on_puback(&mut self, id: u16) {
        let done = {
            let mut st = lock(&self.cell.state);
            match st.inflight.get(&id) {
                Some(i) if i.delivery.qos == QoS::AtLeastOnce => st.inflight.remove(&id),
                _ => None,
            }
        };
        if let Some(mut i) = done {
            self.dequeue(&i.delivery);
            i.delivery.acknowledge();
        }
    }

    /// Removes an acknowledged, expired or dropped message from the store.
    pub(super) fn dequeue(&self, d: &Delivery) {
        if let Some(seq) = d.seq {
            self.ctx.shared.persist(vec![Op::Dequeue {
                client_id: self.client_id.to_string(),
                seq,
            }]);
        }
    }

    pub(super) fn on_pubrec(&mut self, r: PubResponse) {
        let known = {
            let mut st = lock(&self.cell.state);
            match st.inflight.get_mut(&r.packet_id) {
                Some(i) if i.delivery.qos == QoS::ExactlyOnce => {
                    if r.reason_code >= 0x80 {
                        st.inflight.remove(&r.packet_id);
                        return;
                    }
                    i.stage = Stage::Released;
                    true
                }
                _ => false,
            }
        };
        let code = if known || !self.version.is_v5() {
            reason::SUCCESS
        } else {
            reason::PACKET_IDENTIFIER_NOT_FOUND
        };
        self.send(&Packet::PubRel(PubResponse {
            packet_id: r.packet_id,
            reason_code: code,
            properties: Properties::default(),
        }));
    }

    pub(super) fn on_pubrel(&mut self, id: u16) {
        let known = lock(&self.cell.state).incoming_qos2.remove(&id);
        let code = if known || !self.version.is_v5() {
            reason::SUCCESS
        } else {
            reason::PACKET_IDENTIFIER_NOT_FOUND
        };
        self.send(&Packet::PubComp(PubResponse {
            packet_id: id,
            reason_code: code,
            properties: Properties::default(),
        }));
    }

    pub(super) fn on_pubcomp(&mut self, id: u16) {
        let done = {
            let mut st = lock(&self.cell.state);
            match st.inflight.get(&id) {
                Some(i) if i.stage == Stage::Released => st.inflight.remove(&id),
                _ => None,
            }
        };
        if let Some(mut i) = done {
            self.dequeue(&i.delivery);
            i.delivery.acknowledge();
        }
    }

    pub(super) fn on_subscribe(&mut self, s: Subscribe) {
        let shared = self.ctx.shared.clone();
        let access = shared.access();
        let sub_id = s.properties.subscription_identifiers.first().copied();
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut retained: Vec<(Arc<Message>, QoS)> = Vec::new();
        for (filter, opts) in &s.filters {
            let (group, inner) = split_shared(filter);
            let valid =
                topic::valid_topic_filter(filter) && (group.is_some() || !topic::is_shared(filter));
            if !valid {
                codes.push(reason::TOPIC_FILTER_INVALID);
                continue;
            }
            if !access.may(
                self.username.as_deref(),
                &self.client_id,
                Action::Subscribe,
                inner,
            ) {
                shared
                    .stats
                    .subscriptions_denied
                    .fetch_add(1, Ordering::Relaxed);
                self.log_denied("subscribe", filter);
                // 0x80 (Unspecified error) rather than 0x87: both are valid MQTT 5 SUBACK
                // codes, and the Eclipse Paho client (and its interoperability suite)
                // accepts only 0x80 for a refused subscription.
                codes.push(reason::UNSPECIFIED_ERROR);
                continue;
            }
            let (existed, persisted) = {
                let mut st = lock(&self.cell.state);
                let existed = st
                    .subscriptions
                    .insert(filter.clone(), (*opts, sub_id))
                    .is_some();
                (existed, st.persisted)
            };
            if persisted {
                shared.persist(vec![persist::subscription_op(
                    &self.client_id,
                    filter,
                    opts,
                    sub_id,
                )]);
            }
            lock(&shared.subs).insert(
                inner,
                group,
                SubTarget {
                    cell: self.cell.clone(),
                    options: *opts,
                    subscription_id: sub_id,
                },
            );
            codes.push(opts.qos.as_u8());
            let send_retained = group.is_none()
                && match opts.retain_handling {
                    codec::RetainHandling::SendAtSubscribe => true,
                    codec::RetainHandling::SendAtSubscribeIfNew => !existed,
                    codec::RetainHandling::DoNotSend => false,
                };
            if send_retained {
                // Retained messages are deliveries too: only what this client may read.
                let owner = lock(&self.cell.state).owner.clone();
                retained.extend(
                    shared
                        .retained_for(inner)
                        .into_iter()
                        .filter(|m| {
                            shared.may_read(&access, owner.as_ref(), &self.client_id, &m.topic)
                        })
                        .map(|m| (m, opts.qos)),
                );
            }
        }
        self.send(&Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            reason_codes: codes,
            properties: Properties::default(),
        }));
        for (msg, granted) in retained {
            let qos = msg.qos.min(granted);
            shared.deliver(
                &self.cell,
                Delivery {
                    msg,
                    qos,
                    retain: true,
                    subscription_ids: sub_id.into_iter().collect(),
                    ack: None,
                    seq: None,
                },
            );
        }
    }

    pub(super) fn on_unsubscribe(&mut self, u: Unsubscribe) {
        let shared = self.ctx.shared.clone();
        let mut codes = Vec::with_capacity(u.filters.len());
        for filter in &u.filters {
            let existed = lock(&self.cell.state)
                .subscriptions
                .remove(filter)
                .is_some();
            if existed {
                let (group, inner) = split_shared(filter);
                lock(&shared.subs).remove(inner, group, &self.client_id);
                codes.push(reason::SUCCESS);
            } else {
                codes.push(reason::NO_SUBSCRIPTION_EXISTED);
            }
        }
        self.send(&Packet::UnsubAck(UnsubAck {
            packet_id: u.packet_id,
            reason_codes: codes,
            properties: Properties::default(),
        }));
    }

    pub(super) fn on_disconnect(&mut self, d: Disconnect) -> End {
        if let Some(secs) = d.properties.session_expiry_interval {
            if self.session_expiry_zero && secs != 0 {
                // MQTT-3.14.2-2: a session that was to end with the connection cannot be
                // extended at DISCONNECT.
                self.disconnect(reason::PROTOCOL_ERROR);
                return End::Abnormal("session expiry set at DISCONNECT".into());
            }
            let mut st = lock(&self.cell.state);
            st.expiry = Expiry::from_v5(secs).capped(self.expiry_cap);
            if st.persisted && st.expiry != Expiry::AtDisconnect {
                self.ctx
                    .shared
                    .persist(vec![persist::session_op(&self.client_id, &st, false)]);
            }
        }
        if d.reason_code == reason::DISCONNECT_WITH_WILL_MESSAGE {
            End::WithWill
        } else {
            End::Normal
        }
    }

    /// On resuming a session: resend what was in flight (PUBLISH with DUP, or PUBREL).
    /// A message this client's owner may no longer read (the session was taken over by
    /// another user, or the ACL changed) is dropped instead, as acknowledged.
    pub(super) fn resend_inflight(&mut self) {
        let now = Instant::now();
        let mut packets = Vec::new();
        let access = self.ctx.shared.access();
        let mut denied = Vec::new();
        {
            let mut st = lock(&self.cell.state);
            if access.acl.is_some() {
                let ids: Vec<u16> = st
                    .inflight
                    .iter()
                    .filter(|(_, i)| {
                        i.stage == Stage::Published
                            && !access.may(
                                self.username.as_deref(),
                                &self.client_id,
                                Action::Read,
                                &i.delivery.msg.topic,
                            )
                    })
                    .map(|(id, _)| *id)
                    .collect();
                denied.extend(ids.into_iter().filter_map(|id| st.inflight.remove(&id)));
            }
            for (id, i) in &st.inflight {
                packets.push(match i.stage {
                    Stage::Published => publish_packet(&i.delivery, Some(*id), true, now),
                    Stage::Released => Packet::PubRel(PubResponse::new(*id)),
                });
            }
        }
        for p in packets {
            self.send(&p);
        }
        for mut i in denied {
            self.ctx
                .shared
                .stats
                .deliveries_denied
                .fetch_add(1, Ordering::Relaxed);
            self.dequeue(&i.delivery);
            i.delivery.acknowledge();
        }
    }

    /// Moves messages from the session queue to the outgoing buffer while the buffer and the
    /// client's in-flight window have room.
    pub(super) fn pump(&mut self) {
        let now = Instant::now();
        let shared = self.ctx.shared.clone();
        // Checked at sending too: the session's owner or the ACL may have changed since the
        // message was queued (and a restored session's queue was never checked).
        let access = shared.access();
        let check_read = access.acl.is_some();
        let mut marked = Vec::new();
        let mut st = lock(&self.cell.state);
        if st.generation != self.generation {
            return;
        }
        let queued = st.queue.len();
        while self.out.len() < OUT_HIGH_WATER {
            let Some(front) = st.queue.front() else {
                break;
            };
            if front.qos != QoS::AtMostOnce && st.inflight.len() >= self.send_window {
                break;
            }
            let Some(mut d) = st.pop() else {
                break;
            };
            if d.msg.is_expired(now) {
                shared
                    .stats
                    .publishes_expired
                    .fetch_add(1, Ordering::Relaxed);
                d.acknowledge();
                continue;
            }
            if check_read
                && !access.may(
                    self.username.as_deref(),
                    &self.client_id,
                    Action::Read,
                    &d.msg.topic,
                )
            {
                shared
                    .stats
                    .deliveries_denied
                    .fetch_add(1, Ordering::Relaxed);
                if let Some(seq) = d.seq {
                    marked.push(Op::Dequeue {
                        client_id: self.client_id.to_string(),
                        seq,
                    });
                }
                d.acknowledge();
                continue;
            }
            let id = if d.qos == QoS::AtMostOnce {
                None
            } else {
                st.next_packet_id()
            };
            let mut packet = publish_packet(&d, id, false, now);
            // A new alias is only remembered once its PUBLISH is really sent (below): if this
            // one is discarded, the client never learns the alias.
            let new_alias = alias_out(
                &self.out_aliases,
                self.out_alias_max,
                &d.msg.topic,
                &mut packet,
            );
            if packet
                .encoded_len(self.version)
                .is_ok_and(|n| n > self.max_out_packet)
            {
                // MQTT-3.1.2-25: a message too big for the client is discarded.
                shared
                    .stats
                    .publishes_dropped
                    .fetch_add(1, Ordering::Relaxed);
                d.acknowledge();
                continue;
            }
            let before = self.out.len();
            if let Err(e) = codec::encode(&packet, self.version, &mut self.out) {
                warn!(client = %self.client_id, error = %e, "Cannot encode a PUBLISH; dropping it");
                continue;
            }
            if let Some(alias) = new_alias {
                self.out_aliases.insert(d.msg.topic.clone(), alias);
            }
            shared
                .stats
                .bytes_sent
                .fetch_add((self.out.len() - before) as u64, Ordering::Relaxed);
            shared.stats.messages_sent.fetch_add(1, Ordering::Relaxed);
            if let (Some(id), Some(seq)) = (id, d.seq) {
                marked.push(Op::MarkSent {
                    client_id: self.client_id.to_string(),
                    seq,
                    packet_id: id,
                });
            }
            if let Some(id) = id {
                st.inflight.insert(
                    id,
                    Inflight {
                        delivery: d,
                        stage: Stage::Published,
                    },
                );
            }
        }
        let taken = queued - st.queue.len();
        self.cell.flow.progressed(&self.client_id, &st, taken);
        drop(st);
        shared.persist(marked);
    }
}

/// Uses a topic alias toward the client when it allows them (MQTT 5.0 §3.3.2.3.4): the
/// first PUBLISH on a topic sets the alias, later ones send it with an empty topic. The first
/// `max` topics get one.
pub(super) fn alias_out(
    aliases: &HashMap<Arc<str>, u16>,
    max: u16,
    topic: &Arc<str>,
    packet: &mut Packet,
) -> Option<u16> {
    if max == 0 {
        return None;
    }
    let Packet::Publish(p) = packet else {
        return None;
    };
    match aliases.get(topic) {
        Some(&alias) => {
            p.properties.topic_alias = Some(alias);
            p.topic.clear();
            None
        }
        None => {
            let n = aliases.len();
            if n < usize::from(max) {
                let alias = n as u16 + 1;
                p.properties.topic_alias = Some(alias);
                Some(alias)
            } else {
                None
            }
        }
    }
}

/// The PUBLISH for one delivery.
pub(crate) fn publish_packet(
    d: &Delivery,
    packet_id: Option<u16>,
    dup: bool,
    now: Instant,
) -> Packet {
    let mut properties = d.msg.properties.as_deref().cloned().unwrap_or_default();
    properties.subscription_identifiers = d.subscription_ids.clone();
    if let Some(at) = d.msg.expires_at {
        let left = at.saturating_duration_since(now).as_secs();
        properties.message_expiry_interval = Some(u32::try_from(left.max(1)).unwrap_or(u32::MAX));
    }
    Packet::Publish(Publish {
        dup,
        qos: d.qos,
        retain: d.retain,
        topic: d.msg.topic.to_string(),
        packet_id,
        properties,
        payload: d.msg.payload.clone(),
    })
}
