//! Requests byte for byte as the Python clients (ibapi-latest 10.51.1, ib_async 2.1.0) write them.
//!
//! The frames below were produced by that client's own `EClient` (its `reqMktData`,
//! `reqTickByTickData`, `reqContractDetails`, `startApi`, the startup sync requests, ...)
//! with a capturing connection, at server versions 157, 200, 206 and 226: a text-only,
//! a last-text, a mixed (market data and contract details in protobuf, the rest text with
//! a binary id) and an all-protobuf version. Each frame must decode, and re-encoding the
//! decoded request must give the same bytes.

use ib_stream::tws::{ClientMsg, FrameReader};

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// (version, frames as hex, one per request, length prefix included).
const CAPTURED: &[(u32, &[&str])] = &[
    (
        157,
        &[
            "000000083731003200370000",
            "0000000735390031003300",
            "0000004631003131003135303030303030303000323635353938004141504c0053544b0000000000534d415254004e41534441510055534400000030003233332c323336003000300000",
            "0000000f320032003135303030303030303000",
            "000000403937003135303030303030303100323635353938004141504c0053544b0000000000534d415254004e41534441510055534400000042696441736b0030003000",
            "0000000e3938003135303030303030303100",
            "0000003a390038003135303030303030303200323635353938004141504c0053544b0000000000534d415254004e41534441510055534400000030000000",
            "000000053439003100",
            "00000007380031002d3100",
            "000000053137003100",
            "000000053631003100",
            "0000000435003100",
            "000000053939003100",
            "0000001036003200310044553132333435363700",
            "000000143736003100390044553132333435363700003100",
            "00000018370033003130003300445531323334353637000000000000",
            "0000000731350031003100",
        ],
    ),
    (
        200,
        &[
            "000000083731003200370000",
            "0000000735390031003300",
            "0000004631003131003135303030303030303000323635353938004141504c0053544b0000000000534d415254004e41534441510055534400000030003233332c323336003000300000",
            "0000000f320032003135303030303030303000",
            "000000403937003135303030303030303100323635353938004141504c0053544b0000000000534d415254004e41534441510055534400000042696441736b0030003000",
            "0000000e3938003135303030303030303100",
            "0000003b390038003135303030303030303200323635353938004141504c0053544b0000000000534d415254004e4153444151005553440000003000000000",
            "000000053439003100",
            "00000007380031002d3100",
            "000000053137003100",
            "000000053631003100",
            "0000000435003100",
            "000000053939003100",
            "0000001036003200310044553132333435363700",
            "000000143736003100390044553132333435363700003100",
            "0000002537003300313000330044553132333435363700000000000032313437343833363437003000",
            "0000000731350031003100",
        ],
    ),
    (
        206,
        &[
            "00000009000000473200370000",
            "00000006000001030803",
            "00000038000000c90880dea0cb05122308fe9a1012044141504c1a0353544b4205534d4152544a064e415344415152035553441a073233332c323336",
            "0000000a000000ca0880dea0cb05",
            "00000041000000613135303030303030303100323635353938004141504c0053544b0000000000534d415254004e41534441510055534400000042696441736b0030003000",
            "0000000f000000623135303030303030303100",
            "0000002f000000d10882dea0cb05122308fe9a1012044141504c1a0353544b4205534d4152544a064e41534441515203555344",
            "00000006000000313100",
            "000000090000000831002d3100",
            "00000006000000113100",
            "000000060000003d3100",
            "00000004000000cd",
            "000000060000012b0801",
            "00000012000000063200310044553132333435363700",
            "000000150000004c3100390044553132333435363700003100",
            "00000015000000cf080a120d08031209445531323334353637",
            "00000006000000d70801",
        ],
    ),
    (
        226,
        &[
            "000000060000010f0807",
            "00000006000001030803",
            "00000038000000c90880dea0cb05122308fe9a1012044141504c1a0353544b4205534d4152544a064e415344415152035553441a073233332c323336",
            "0000000a000000ca0880dea0cb05",
            "00000039000001290881dea0cb05122308fe9a1012044141504c1a0353544b4205534d4152544a064e415344415152035553441a0642696441736b2000",
            "0000000a0000012a0881dea0cb05",
            "0000002f000000d10882dea0cb05122308fe9a1012044141504c1a0353544b4205534d4152544a064e41534441515203555344",
            "0000000a000001320882dea0cb05",
            "00000004000000f9",
            "0000000f000000d008ffffffffffffffffff01",
            "00000004000000d9",
            "0000000400000105",
            "00000004000000cd",
            "000000060000012b0801",
            "00000011000000ce08011209445531323334353637",
            "0000001300000114080912094455313233343536372001",
            "00000015000000cf080a120d08031209445531323334353637",
            "00000006000000d70801",
        ],
    ),
];

#[test]
fn python_client_requests_decode_and_re_encode_byte_for_byte() {
    for &(ver, frames) in CAPTURED {
        for hex in frames {
            let wire = unhex(hex);
            let mut r = FrameReader::new();
            r.feed(&wire);
            let frame = r.next_frame(ver).unwrap().expect("whole frame");
            let m = ClientMsg::decode(&frame, ver).unwrap_or_else(|e| panic!("v{ver} {hex}: {e}"));
            assert!(!matches!(m, ClientMsg::Unknown { .. }), "v{ver}: {m:?}");
            assert_eq!(frame.is_proto(), ver >= m.proto_since(), "v{ver}: {m:?}");
            let mut out = Vec::new();
            m.encode(ver, &mut out).unwrap();
            assert_eq!(out, wire, "v{ver}: {m:?}");
        }
    }
}

#[test]
fn python_client_contract_fields_read_as_sent() {
    // reqMktData at 226: conId 265598, AAPL STK SMART/NASDAQ USD, ticks "233,236".
    let (_, frames) = CAPTURED.iter().find(|(v, _)| *v == 226).unwrap();
    let mut seen = false;
    for hex in *frames {
        let wire = unhex(hex);
        let mut r = FrameReader::new();
        r.feed(&wire);
        let f = r.next_frame(226).unwrap().unwrap();
        if let ClientMsg::ReqMktData {
            req_id,
            contract,
            generic_tick_list,
            ..
        } = ClientMsg::decode(&f, 226).unwrap()
        {
            assert_eq!(req_id, 1_500_000_000);
            assert_eq!(
                (
                    contract.con_id,
                    contract.symbol.as_str(),
                    contract.primary_exchange.as_str()
                ),
                (265_598, "AAPL", "NASDAQ")
            );
            assert_eq!(generic_tick_list, "233,236");
            assert_eq!(contract.strike, ib_stream::ipc::UNDEF_I64);
            seen = true;
        }
    }
    assert!(seen);
}

/// (version, frames) written by ib_async 2.1.0's own `Client` (text only, strike "0.0").
const IB_ASYNC: &[(u32, &[&str])] = &[
    (
        157,
        &[
            "00000009373100320031310000",
            "0000000735390031003300",
            "0000004831003131003500323635353938004141504c0053544b0000302e30000000534d415254004e415344415100555344004141504c004141504c0030003233332c323336003000300000",
            "00000006320032003500",
            "000000423937003600323635353938004141504c0053544b0000302e30000000534d415254004e415344415100555344004141504c004141504c0042696441736b0030003000",
            "000000053938003600",
            "0000002939003800330030004141504c0053544b0000302e30000000534d415254000055534400000030000000",
            "000000053439003100",
            "00000006380031003100",
            "000000053137003100",
            "000000053631003100",
            "0000000435003100",
            "000000053939003000",
            "0000001036003200310044553132333435363700",
            "000000143736003100390044553132333435363700003000",
            "0000000f370033003130003000000000000000",
            "0000000731350031003100",
        ],
    ),
    (
        178,
        &[
            "00000009373100320031310000",
            "0000000735390031003300",
            "0000004831003131003500323635353938004141504c0053544b0000302e30000000534d415254004e415344415100555344004141504c004141504c0030003233332c323336003000300000",
            "00000006320032003500",
            "000000423937003600323635353938004141504c0053544b0000302e30000000534d415254004e415344415100555344004141504c004141504c0042696441736b0030003000",
            "000000053938003600",
            "0000002a39003800330030004141504c0053544b0000302e30000000534d41525400005553440000003000000000",
            "000000053439003100",
            "00000006380031003100",
            "000000053137003100",
            "000000053631003100",
            "0000000435003100",
            "000000053939003000",
            "0000001036003200310044553132333435363700",
            "000000143736003100390044553132333435363700003000",
            "0000000f370033003130003000000000000000",
            "0000000731350031003100",
        ],
    ),
];

/// ib_async writes a zero strike as "0.0"; the codec writes the shortest form "0". Both
/// mean 0, so the comparison rewrites that one field.
fn shortest_strike(wire: &[u8]) -> Vec<u8> {
    let body = &wire[4..];
    let text = body
        .split(|&b| b == 0)
        .map(|f| if f == b"0.0" { &b"0"[..] } else { f })
        .collect::<Vec<_>>()
        .join(&0u8);
    let mut out = (text.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&text);
    out
}

#[test]
fn ib_async_requests_decode_and_re_encode() {
    for &(ver, frames) in IB_ASYNC {
        let mut ids = Vec::new();
        for hex in frames {
            let wire = unhex(hex);
            let mut r = FrameReader::new();
            r.feed(&wire);
            let frame = r.next_frame(ver).unwrap().expect("whole frame");
            let m = ClientMsg::decode(&frame, ver).unwrap_or_else(|e| panic!("v{ver} {hex}: {e}"));
            assert!(!matches!(m, ClientMsg::Unknown { .. }), "v{ver}: {m:?}");
            if let ClientMsg::ReqMktData {
                req_id,
                contract,
                generic_tick_list,
                ..
            } = &m
            {
                assert_eq!((*req_id, contract.con_id, contract.strike), (5, 265_598, 0));
                assert_eq!(generic_tick_list, "233,236");
            }
            let mut out = Vec::new();
            m.encode(ver, &mut out).unwrap();
            assert_eq!(out, shortest_strike(&wire), "v{ver}: {m:?}");
            ids.push(m.msg_id());
        }
        // startApi, then the requests ib_async's connect and a subscription send.
        assert_eq!(
            ids,
            [71, 59, 1, 2, 97, 98, 9, 49, 8, 17, 61, 5, 99, 6, 76, 7, 15]
        );
    }
}
