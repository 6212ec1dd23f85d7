#[cfg(feature = "proto-ipv4")]
mod ipv4;
#[cfg(feature = "proto-ipv6")]
mod ipv6;
#[cfg(feature = "proto-sixlowpan")]
mod sixlowpan;

#[allow(unused)]
use std::vec::Vec;

use crate::tests::setup;

use rstest::*;

use super::*;

use crate::iface::Interface;
use crate::phy::ChecksumCapabilities;
#[cfg(feature = "alloc")]
use crate::phy::Loopback;
use crate::time::Instant;

#[allow(unused)]
fn fill_slice(s: &mut [u8], val: u8) {
    for x in s.iter_mut() {
        *x = val
    }
}

#[allow(unused)]
fn recv_all(device: &mut crate::tests::TestingDevice, timestamp: Instant) -> Vec<Vec<u8>> {
    let mut pkts = Vec::new();
    while let Some(pkt) = device.tx_queue.pop_front() {
        pkts.push(pkt)
    }
    pkts
}

#[derive(Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
struct MockTxToken;

impl TxToken for MockTxToken {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let mut junk = [0; 1536];
        f(&mut junk[..len])
    }
}

#[test]
#[should_panic(expected = "The hardware address does not match the medium of the interface.")]
#[cfg(all(feature = "medium-ip", feature = "medium-ethernet", feature = "alloc"))]
fn test_new_panic() {
    let mut device = Loopback::new(Medium::Ethernet);
    let config = Config::new(HardwareAddress::Ip);
    Interface::new(config, &mut device, Instant::ZERO);
}

#[cfg(feature = "socket-udp")]
#[rstest]
#[case::ip(Medium::Ip)]
#[cfg(feature = "medium-ip")]
#[case::ethernet(Medium::Ethernet)]
#[cfg(feature = "medium-ethernet")]
#[case::ieee802154(Medium::Ieee802154)]
#[cfg(feature = "medium-ieee802154")]
fn test_handle_udp_broadcast(#[case] medium: Medium) {
    use crate::socket::udp;
    use crate::wire::IpEndpoint;

    static UDP_PAYLOAD: [u8; 5] = [0x48, 0x65, 0x6c, 0x6c, 0x6f];

    let (mut iface, mut sockets, _device) = setup(medium);

    let rx_buffer = udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY], vec![0; 15]);
    let tx_buffer = udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY], vec![0; 15]);

    let udp_socket = udp::Socket::new(rx_buffer, tx_buffer);

    let mut udp_bytes = vec![0u8; 13];
    let mut packet = UdpPacket::new_unchecked(&mut udp_bytes);

    let socket_handle = sockets.add(udp_socket);

    #[cfg(feature = "proto-ipv6")]
    let src_ip = Ipv6Address::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
    #[cfg(all(not(feature = "proto-ipv6"), feature = "proto-ipv4"))]
    let src_ip = Ipv4Address::new(0x7f, 0x00, 0x00, 0x02);

    let udp_repr = UdpRepr {
        src_port: 67,
        dst_port: 68,
    };

    #[cfg(feature = "proto-ipv6")]
    let ip_repr = IpRepr::Ipv6(Ipv6Repr {
        src_addr: src_ip,
        dst_addr: IPV6_LINK_LOCAL_ALL_NODES,
        next_header: IpProtocol::Udp,
        payload_len: udp_repr.header_len() + UDP_PAYLOAD.len(),
        hop_limit: 0x40,
    });
    #[cfg(all(not(feature = "proto-ipv6"), feature = "proto-ipv4"))]
    let ip_repr = IpRepr::Ipv4(Ipv4Repr {
        src_addr: src_ip,
        dst_addr: Ipv4Address::BROADCAST,
        next_header: IpProtocol::Udp,
        payload_len: udp_repr.header_len() + UDP_PAYLOAD.len(),
        hop_limit: 0x40,
    });
    let dst_addr = ip_repr.dst_addr();

    // Bind the socket to port 68
    let socket = sockets.get_mut::<udp::Socket>(socket_handle);
    assert_eq!(socket.bind(68), Ok(()));
    assert!(!socket.can_recv());
    assert!(socket.can_send());

    udp_repr.emit(
        &mut packet,
        &ip_repr.src_addr(),
        &ip_repr.dst_addr(),
        UDP_PAYLOAD.len(),
        |buf| buf.copy_from_slice(&UDP_PAYLOAD),
        &ChecksumCapabilities::default(),
    );

    // Packet should be handled by bound UDP socket
    assert_eq!(
        iface.inner.process_udp(
            &mut sockets,
            PacketMeta::default(),
            false,
            ip_repr,
            packet.into_inner(),
        ),
        None
    );

    // Make sure the payload to the UDP packet processed by process_udp is
    // appended to the bound sockets rx_buffer
    let socket = sockets.get_mut::<udp::Socket>(socket_handle);
    assert!(socket.can_recv());
    assert_eq!(
        socket.recv(),
        Ok((
            &UDP_PAYLOAD[..],
            udp::UdpMetadata {
                local_address: Some(dst_addr),
                ..IpEndpoint::new(src_ip.into(), 67).into()
            }
        ))
    );
}

#[test]
#[cfg(all(feature = "medium-ip", feature = "socket-tcp", feature = "proto-ipv6"))]
pub fn tcp_not_accepted() {
    let (mut iface, mut sockets, _) = setup(Medium::Ip);
    let tcp = TcpRepr {
        src_port: 4242,
        dst_port: 4243,
        control: TcpControl::Syn,
        seq_number: TcpSeqNumber(-10001),
        ack_number: None,
        window_len: 256,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None, None, None],
        timestamp: None,
        payload: &[],
    };

    let mut tcp_bytes = vec![0u8; tcp.buffer_len()];

    tcp.emit(
        &mut TcpPacket::new_unchecked(&mut tcp_bytes),
        &Ipv6Address::new(0xfe80, 0, 0, 0, 0, 0, 0, 2).into(),
        &Ipv6Address::new(0xfe80, 0, 0, 0, 0, 0, 0, 1).into(),
        &ChecksumCapabilities::default(),
    );

    assert_eq!(
        iface.inner.process_tcp(
            &mut sockets,
            false,
            IpRepr::Ipv6(Ipv6Repr {
                src_addr: Ipv6Address::new(0xfe80, 0, 0, 0, 0, 0, 0, 2),
                dst_addr: Ipv6Address::new(0xfe80, 0, 0, 0, 0, 0, 0, 1),
                next_header: IpProtocol::Tcp,
                payload_len: tcp.buffer_len(),
                hop_limit: 64,
            }),
            &tcp_bytes,
        ),
        Some(Packet::new_ipv6(
            Ipv6Repr {
                src_addr: Ipv6Address::new(0xfe80, 0, 0, 0, 0, 0, 0, 1),
                dst_addr: Ipv6Address::new(0xfe80, 0, 0, 0, 0, 0, 0, 2),
                next_header: IpProtocol::Tcp,
                payload_len: tcp.buffer_len(),
                hop_limit: 64,
            },
            IpPayload::Tcp(TcpRepr {
                src_port: 4243,
                dst_port: 4242,
                control: TcpControl::Rst,
                seq_number: TcpSeqNumber(0),
                ack_number: Some(TcpSeqNumber(-10000)),
                window_len: 0,
                window_scale: None,
                max_seg_size: None,
                sack_permitted: false,
                sack_ranges: [None, None, None],
                timestamp: None,
                payload: &[],
            })
        ))
    );
    // Unspecified destination address.
    tcp.emit(
        &mut TcpPacket::new_unchecked(&mut tcp_bytes),
        &Ipv6Address::new(0xfe80, 0, 0, 0, 0, 0, 0, 2).into(),
        &Ipv6Address::UNSPECIFIED.into(),
        &ChecksumCapabilities::default(),
    );

    assert_eq!(
        iface.inner.process_tcp(
            &mut sockets,
            false,
            IpRepr::Ipv6(Ipv6Repr {
                src_addr: Ipv6Address::new(0xfe80, 0, 0, 0, 0, 0, 0, 2),
                dst_addr: Ipv6Address::UNSPECIFIED,
                next_header: IpProtocol::Tcp,
                payload_len: tcp.buffer_len(),
                hop_limit: 64,
            }),
            &tcp_bytes,
        ),
        None,
    );
}

#[test]
#[cfg(all(feature = "medium-ip", feature = "socket-tcp", feature = "proto-ipv4"))]
pub fn tcp_listen_drops_unspecified_src() {
    use crate::socket::tcp;

    let (mut iface, mut sockets, _) = setup(Medium::Ip);

    let tcp_socket = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; 64]),
        tcp::SocketBuffer::new(vec![0; 64]),
    );
    let handle = sockets.add(tcp_socket);
    sockets.get_mut::<tcp::Socket>(handle).listen(1234).unwrap();

    let tcp = TcpRepr {
        src_port: 65000,
        dst_port: 1234,
        control: TcpControl::Syn,
        seq_number: TcpSeqNumber(0),
        ack_number: None,
        window_len: 1024,
        window_scale: None,
        max_seg_size: Some(1460),
        sack_permitted: false,
        sack_ranges: [None, None, None],
        timestamp: None,
        payload: &[],
    };

    let mut tcp_bytes = vec![0u8; tcp.buffer_len()];
    tcp.emit(
        &mut TcpPacket::new_unchecked(&mut tcp_bytes),
        &Ipv4Address::UNSPECIFIED.into(),
        &Ipv4Address::new(127, 0, 0, 1).into(),
        &ChecksumCapabilities::default(),
    );

    let reply = iface.inner.process_tcp(
        &mut sockets,
        false,
        IpRepr::Ipv4(Ipv4Repr {
            src_addr: Ipv4Address::UNSPECIFIED,
            dst_addr: Ipv4Address::new(127, 0, 0, 1),
            next_header: IpProtocol::Tcp,
            payload_len: tcp.buffer_len(),
            hop_limit: 64,
        }),
        &tcp_bytes,
    );

    assert_eq!(reply, None);
    assert!(sockets.get_mut::<tcp::Socket>(handle).is_listening());
}

/// tsk8s patch: `set_skip_quiet_sockets`: sockets with nothing to send are remembered and
/// skipped, and whatever may give them something to send (a segment, `get_mut`) brings them
/// back; `poll_at` is the same as without it.
#[test]
#[cfg(all(
    feature = "socket-tcp",
    feature = "medium-ip",
    feature = "proto-ipv4",
    feature = "alloc"
))]
fn test_skip_quiet_sockets() {
    use crate::iface::SocketSet;
    use crate::socket::tcp;
    use crate::time::Duration;

    let mut device = Loopback::new(Medium::Ip);
    let mut iface = Interface::new(Config::new(HardwareAddress::Ip), &mut device, Instant::ZERO);
    iface.update_ip_addrs(|a| {
        a.push(IpCidr::new(IpAddress::v4(127, 0, 0, 1), 8)).unwrap();
    });
    iface.set_skip_quiet_sockets(true);
    let mut sockets = SocketSet::new(vec![]);
    let mk = || {
        tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 4096]),
            tcp::SocketBuffer::new(vec![0; 4096]),
        )
    };
    let server = sockets.add(mk());
    let client = sockets.add(mk());
    let idle: Vec<_> = (0..8).map(|_| sockets.add(mk())).collect();
    let quiet = |sockets: &SocketSet, h| {
        sockets
            .items()
            .find(|i| i.meta.handle == h)
            .and_then(|i| i.meta.quiet)
    };
    sockets.get_mut::<tcp::Socket>(server).listen(1234).unwrap();
    sockets
        .get_mut::<tcp::Socket>(client)
        .connect(iface.context(), (IpAddress::v4(127, 0, 0, 1), 1234), 65000)
        .unwrap();
    let mut now = Instant::ZERO;
    let mut run = |iface: &mut Interface, sockets: &mut SocketSet, now: &mut Instant| {
        for _ in 0..20 {
            iface.poll(*now, &mut device, sockets);
            *now += Duration::from_millis(1);
        }
    };
    run(&mut iface, &mut sockets, &mut now);
    assert_eq!(
        sockets.get::<tcp::Socket>(client).state(),
        tcp::State::Established
    );
    for &h in &idle {
        assert_eq!(quiet(&sockets, h), Some(PollAt::Ingress));
    }
    // The established pair went quiet too (a keep-alive-less idle connection).
    assert!(quiet(&sockets, client).is_some());

    // Data queued through `get_mut` leaves; the server's answer comes back.
    sockets
        .get_mut::<tcp::Socket>(client)
        .send_slice(b"hello")
        .unwrap();
    assert_eq!(quiet(&sockets, client), None);
    run(&mut iface, &mut sockets, &mut now);
    let mut buf = [0u8; 8];
    assert_eq!(
        sockets.get_mut::<tcp::Socket>(server).recv_slice(&mut buf),
        Ok(5)
    );
    sockets
        .get_mut::<tcp::Socket>(server)
        .send_slice(b"world")
        .unwrap();
    run(&mut iface, &mut sockets, &mut now);
    assert_eq!(
        sockets.get_mut::<tcp::Socket>(client).recv_slice(&mut buf),
        Ok(5)
    );
    assert_eq!(&buf[..5], b"world");

    // A timer (the client's close, then TIME-WAIT) still fires, and `poll_at` agrees with
    // a fresh computation.
    sockets.get_mut::<tcp::Socket>(client).close();
    sockets.get_mut::<tcp::Socket>(server).close();
    run(&mut iface, &mut sockets, &mut now);
    let cached = iface.poll_at(now, &sockets);
    iface.set_skip_quiet_sockets(false);
    assert_eq!(cached, iface.poll_at(now, &sockets));
    iface.set_skip_quiet_sockets(true);
    assert_eq!(
        sockets.get::<tcp::Socket>(client).state(),
        tcp::State::TimeWait
    );
    now += Duration::from_secs(20);
    run(&mut iface, &mut sockets, &mut now);
    assert_eq!(
        sockets.get::<tcp::Socket>(client).state(),
        tcp::State::Closed
    );
}

/// tsk8s patch: what idle connections cost a busy one, with and without
/// `set_skip_quiet_sockets` (a measurement, not a check: `cargo test --release --lib
/// bench_idle_sockets -- --ignored --nocapture`).
#[test]
#[ignore]
#[cfg(all(
    feature = "socket-tcp",
    feature = "medium-ip",
    feature = "proto-ipv4",
    feature = "alloc"
))]
fn bench_idle_sockets() {
    use crate::iface::SocketSet;
    use crate::socket::tcp;
    use crate::time::Duration;

    let local = IpAddress::v4(127, 0, 0, 1);
    let mk = |n| {
        tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; n]),
            tcp::SocketBuffer::new(vec![0; n]),
        )
    };
    for skip in [false, true] {
        for n_idle in [0u16, 200, 1000] {
            let mut device = Loopback::new(Medium::Ip);
            let mut iface =
                Interface::new(Config::new(HardwareAddress::Ip), &mut device, Instant::ZERO);
            iface.update_ip_addrs(|a| {
                a.push(IpCidr::new(local, 8)).unwrap();
            });
            iface.set_skip_quiet_sockets(skip);
            let mut sockets = SocketSet::new(vec![]);
            let mut now = Instant::ZERO;
            // Idle established connections (both ends are sockets of this set).
            for i in 0..n_idle / 2 {
                let s = sockets.add(mk(64));
                let c = sockets.add(mk(64));
                sockets.get_mut::<tcp::Socket>(s).listen(2000 + i).unwrap();
                sockets
                    .get_mut::<tcp::Socket>(c)
                    .connect(iface.context(), (local, 2000 + i), 40000 + i)
                    .unwrap();
                for _ in 0..3 {
                    iface.poll(now, &mut device, &mut sockets);
                    now += Duration::from_millis(1);
                }
            }
            let server = sockets.add(mk(65536));
            let client = sockets.add(mk(65536));
            sockets.get_mut::<tcp::Socket>(server).listen(1234).unwrap();
            sockets
                .get_mut::<tcp::Socket>(client)
                .connect(iface.context(), (local, 1234), 65000)
                .unwrap();
            for _ in 0..5 {
                iface.poll(now, &mut device, &mut sockets);
                now += Duration::from_millis(1);
            }
            let data = vec![7u8; 4096];
            let mut buf = vec![0u8; 65536];
            let t = std::time::Instant::now();
            let mut moved = 0usize;
            for _ in 0..20_000 {
                let _ = sockets.get_mut::<tcp::Socket>(client).send_slice(&data);
                iface.poll(now, &mut device, &mut sockets);
                let _ = iface.poll_at(now, &sockets);
                if let Ok(n) = sockets.get_mut::<tcp::Socket>(server).recv_slice(&mut buf) {
                    moved += n;
                }
                iface.poll(now, &mut device, &mut sockets);
                now += Duration::from_micros(50);
            }
            std::println!(
                "skip quiet sockets {skip}, {n_idle} idle: {:.1} us per iteration ({} KiB moved)",
                t.elapsed().as_secs_f64() * 1e6 / 20_000.0,
                moved >> 10
            );
        }
    }
}
