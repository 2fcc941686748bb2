//! A minimal raw MQTT 3.1.1 client for the load generators: no library in the way of the
//! broker being measured.
#![allow(dead_code)]

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

pub fn remaining_length(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

pub fn connect_packet(id: &str, clean: bool) -> Vec<u8> {
    let flags = if clean { 0x02 } else { 0x00 };
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, flags, 0, 60];
    body.extend_from_slice(&(id.len() as u16).to_be_bytes());
    body.extend_from_slice(id.as_bytes());
    let mut out = vec![0x10];
    remaining_length(body.len(), &mut out);
    out.extend(body);
    out
}

pub fn publish_packet(out: &mut Vec<u8>, topic: &str, payload: &[u8], qos: u8, pkid: u16) {
    let len = 2 + topic.len() + if qos > 0 { 2 } else { 0 } + payload.len();
    out.push(0x30 | (qos << 1));
    remaining_length(len, out);
    out.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    out.extend_from_slice(topic.as_bytes());
    if qos > 0 {
        out.extend_from_slice(&pkid.to_be_bytes());
    }
    out.extend_from_slice(payload);
}

pub struct Client {
    pub rd: OwnedReadHalf,
    pub wr: OwnedWriteHalf,
    pub buf: BytesMut,
}

/// One parsed packet: (first byte, body).
pub fn parse(buf: &mut BytesMut) -> Option<(u8, BytesMut)> {
    if buf.len() < 2 {
        return None;
    }
    let (mut len, mut i) = (0usize, 1usize);
    loop {
        let b = *buf.get(i)?;
        len |= ((b & 0x7F) as usize) << (7 * (i - 1));
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
    }
    if buf.len() < i + len {
        return None;
    }
    let first = buf[0];
    buf.advance(i);
    Some((first, buf.split_to(len)))
}

impl Client {
    pub async fn connect(port: u16, id: &str) -> std::io::Result<Client> {
        Self::connect_with(port, id, true).await.map(|(c, _)| c)
    }

    /// Connects with the given clean-session flag; also returns session present.
    pub async fn connect_with(port: u16, id: &str, clean: bool) -> std::io::Result<(Client, bool)> {
        let s = TcpStream::connect(("127.0.0.1", port)).await?;
        s.set_nodelay(true)?;
        let (rd, mut wr) = s.into_split();
        wr.write_all(&connect_packet(id, clean)).await?;
        let mut c = Client {
            rd,
            wr,
            buf: BytesMut::with_capacity(64 * 1024),
        };
        let (first, body) = c.read_packet().await?;
        if first != 0x20 || body.get(1) != Some(&0) {
            return Err(std::io::Error::other(format!(
                "CONNACK refused: {first:#x} {body:?}"
            )));
        }
        let present = body.first() == Some(&1);
        Ok((c, present))
    }

    pub async fn read_packet(&mut self) -> std::io::Result<(u8, BytesMut)> {
        loop {
            if let Some(p) = parse(&mut self.buf) {
                return Ok(p);
            }
            if self.rd.read_buf(&mut self.buf).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    pub async fn subscribe(&mut self, filter: &str, qos: u8) {
        let mut body = vec![0, 1];
        body.extend_from_slice(&(filter.len() as u16).to_be_bytes());
        body.extend_from_slice(filter.as_bytes());
        body.push(qos);
        let mut out = vec![0x82];
        remaining_length(body.len(), &mut out);
        out.extend(body);
        self.wr.write_all(&out).await.unwrap();
        loop {
            let (first, _) = self.read_packet().await.unwrap();
            if first == 0x90 {
                return;
            }
        }
    }
}
