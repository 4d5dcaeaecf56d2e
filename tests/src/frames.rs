//! Crafted Ethernet frames (and bare IP packets, as tunnel devices present them) for
//! BPF_PROG_TEST_RUN. Checksums are not computed: XDP does not
//! verify them, and these frames never reach a stack.

use std::net::IpAddr;

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

#[derive(Clone, Debug)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    /// Any other protocol number with a raw payload.
    Other {
        proto: u8,
        payload: Vec<u8>,
    },
}

impl L4 {
    pub fn syn(dport: u16) -> Self {
        L4::Tcp {
            sport: 40000,
            dport,
            flags: TCP_SYN,
        }
    }
    pub fn ack(dport: u16) -> Self {
        L4::Tcp {
            sport: 40000,
            dport,
            flags: TCP_ACK,
        }
    }
    /// An ICMP echo request header.
    pub fn icmp_echo() -> Self {
        L4::Other {
            proto: 1,
            payload: vec![8, 0, 0, 0, 0, 0, 0, 0],
        }
    }
    pub fn udp(dport: u16) -> Self {
        L4::Udp {
            sport: 40000,
            dport,
        }
    }
    fn proto(&self) -> u8 {
        match self {
            L4::Tcp { .. } => 6,
            L4::Udp { .. } => 17,
            L4::Other { proto, .. } => *proto,
        }
    }
    fn bytes(&self) -> Vec<u8> {
        match self {
            L4::Tcp {
                sport,
                dport,
                flags,
            } => {
                let mut t = vec![0u8; 20];
                t[0..2].copy_from_slice(&sport.to_be_bytes());
                t[2..4].copy_from_slice(&dport.to_be_bytes());
                t[12] = 5 << 4;
                t[13] = *flags;
                t[14..16].copy_from_slice(&64240u16.to_be_bytes());
                t
            }
            L4::Udp { sport, dport } => {
                let mut u = vec![0u8; 8];
                u[0..2].copy_from_slice(&sport.to_be_bytes());
                u[2..4].copy_from_slice(&dport.to_be_bytes());
                u[4..6].copy_from_slice(&8u16.to_be_bytes());
                u
            }
            L4::Other { payload, .. } => payload.clone(),
        }
    }
}

/// An IPv6 extension header to insert before the transport header.
#[derive(Clone, Debug)]
pub enum Ext {
    HopByHop,
    Routing,
    DestOpts,
    /// Authentication header with `words` 4-byte words of ICV beyond the minimum.
    Ah,
    /// Fragment header: offset in 8-byte units, more-fragments flag.
    Fragment {
        offset: u16,
        more: bool,
    },
    /// Hop-by-hop with a declared length of `(len + 1) * 8` bytes.
    Long {
        len: u8,
    },
}

#[derive(Clone, Debug)]
pub struct Frame {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub l4: L4,
    /// 802.1Q / 802.1ad tags, outermost first (TPIDs).
    pub vlans: Vec<u16>,
    /// IPv4 option bytes (padded to 4 bytes).
    pub ip_options: Vec<u8>,
    /// IPv4 fragment offset (8-byte units) and MF flag.
    pub frag: (u16, bool),
    pub ext: Vec<Ext>,
    /// Extra payload after the transport header.
    pub payload: usize,
}

impl Frame {
    pub fn new(src: &str, dst: &str, l4: L4) -> Self {
        Frame {
            src: src.parse().expect("src"),
            dst: dst.parse().expect("dst"),
            l4,
            vlans: vec![],
            ip_options: vec![],
            frag: (0, false),
            ext: vec![],
            payload: 0,
        }
    }

    pub fn vlan(mut self, tpid: u16) -> Self {
        self.vlans.push(tpid);
        self
    }
    pub fn options(mut self, opts: &[u8]) -> Self {
        self.ip_options = opts.to_vec();
        while !self.ip_options.len().is_multiple_of(4) {
            self.ip_options.push(0);
        }
        self
    }
    pub fn frag(mut self, offset: u16, more: bool) -> Self {
        self.frag = (offset, more);
        self
    }
    pub fn ext(mut self, e: Ext) -> Self {
        self.ext.push(e);
        self
    }
    /// Sets the transport source port (so that rows do not share a flow).
    pub fn sport(mut self, p: u16) -> Self {
        match &mut self.l4 {
            L4::Tcp { sport, .. } | L4::Udp { sport, .. } => *sport = p,
            L4::Other { .. } => {}
        }
        self
    }
    pub fn payload(mut self, n: usize) -> Self {
        self.payload = n;
        self
    }

    /// The Ethernet frame: MAC addresses, VLAN tags, ethertype, then [`Frame::build_ip`].
    pub fn build(&self) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        for tpid in &self.vlans {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&[0x00, 0x64]); // VID 100
        }
        let ethertype: u16 = if self.src.is_ipv4() { 0x0800 } else { 0x86dd };
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend(self.build_ip());
        f
    }

    /// The IP packet alone, as a device without a link-layer header (a tunnel) presents it.
    /// VLAN tags do not apply.
    pub fn build_ip(&self) -> Vec<u8> {
        let mut f = Vec::new();
        let mut l4 = self.l4.bytes();
        l4.extend(std::iter::repeat_n(0xab, self.payload));
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let ihl = 20 + self.ip_options.len();
                let total = (ihl + l4.len()) as u16;
                let mut h = vec![0u8; 20];
                h[0] = 0x40 | (ihl / 4) as u8;
                h[2..4].copy_from_slice(&total.to_be_bytes());
                let fo = (self.frag.0 & 0x1fff) | if self.frag.1 { 0x2000 } else { 0 };
                h[6..8].copy_from_slice(&fo.to_be_bytes());
                h[8] = 64;
                h[9] = self.l4.proto();
                h[12..16].copy_from_slice(&s.octets());
                h[16..20].copy_from_slice(&d.octets());
                f.extend_from_slice(&h);
                f.extend_from_slice(&self.ip_options);
                f.extend_from_slice(&l4);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                // Build the chain back to front so each header names the next.
                let mut next = self.l4.proto();
                let mut chain: Vec<u8> = Vec::new();
                for e in self.ext.iter().rev() {
                    let (code, mut bytes) = match e {
                        Ext::HopByHop => (0u8, vec![0u8; 8]),
                        Ext::Routing => (43, vec![0u8; 8]),
                        Ext::DestOpts => (60, vec![0u8; 8]),
                        Ext::Ah => {
                            // 12 bytes fixed + 4 ICV = 16 bytes: payload len = 16/4 - 2 = 2.
                            let mut b = vec![0u8; 16];
                            b[1] = 2;
                            (51, b)
                        }
                        Ext::Fragment { offset, more } => {
                            let mut b = vec![0u8; 8];
                            let v = (offset << 3) | u16::from(*more);
                            b[2..4].copy_from_slice(&v.to_be_bytes());
                            (44, b)
                        }
                        Ext::Long { len } => {
                            let mut b = vec![0u8; (usize::from(*len) + 1) * 8];
                            b[1] = *len;
                            (0, b)
                        }
                    };
                    bytes[0] = next;
                    if matches!(e, Ext::HopByHop | Ext::Routing | Ext::DestOpts) {
                        bytes[1] = 0;
                    }
                    next = code;
                    bytes.extend_from_slice(&chain);
                    chain = bytes;
                }
                let payload_len = (chain.len() + l4.len()) as u16;
                let mut h = vec![0u8; 40];
                h[0] = 0x60;
                h[4..6].copy_from_slice(&payload_len.to_be_bytes());
                h[6] = next;
                h[7] = 64;
                h[8..24].copy_from_slice(&s.octets());
                h[24..40].copy_from_slice(&d.octets());
                f.extend_from_slice(&h);
                f.extend_from_slice(&chain);
                f.extend_from_slice(&l4);
            }
            _ => panic!("mixed address families"),
        }
        f
    }
}

/// A non-IP frame (ARP request).
pub fn arp() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 0x08, 0x06]);
    f.extend_from_slice(&[0u8; 28]);
    f
}
