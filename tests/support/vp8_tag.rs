//! The VP8 frame tag (RFC 6386 §9.1) that starts a frame's first partition, as
//! the synthetic publishers write it: P bit (0 on a keyframe), version 0,
//! show_frame, first partition size 100; a keyframe adds the start code and
//! 640x360. Shared by the test client and `benches/load.rs`.

pub fn push_frame_tag(p: &mut Vec<u8>, keyframe: bool) {
    let size: u32 = 100;
    p.push(u8::from(!keyframe) | 0x10 | (((size & 7) as u8) << 5));
    p.push(((size >> 3) & 0xff) as u8);
    p.push(((size >> 11) & 0xff) as u8);
    if keyframe {
        p.extend_from_slice(&[0x9d, 0x01, 0x2a]);
        p.extend_from_slice(&640u16.to_le_bytes());
        p.extend_from_slice(&360u16.to_le_bytes());
    }
}
