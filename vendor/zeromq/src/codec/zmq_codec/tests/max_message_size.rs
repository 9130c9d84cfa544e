use super::*;

fn codec_with_limit(max: usize) -> ZmqCodec {
    let mut options = SocketOptions::default();
    options.max_message_size(max);
    let mut codec = ZmqCodec::with_options(&options);
    codec.state = DecoderState::FrameHeader;
    codec.waiting_for = 1;
    codec
}

#[test]
fn a_long_frame_header_over_the_limit_fails_before_reserving() {
    let mut codec = codec_with_limit(1024 * 1024);
    // A long frame announcing 64 GiB, and nothing of its body.
    let mut input = BytesMut::from(&[0b0000_0010u8][..]);
    input.extend_from_slice(&(64u64 << 30).to_be_bytes());
    let result = codec.decode(&mut input);
    assert!(matches!(result, Err(CodecError::Decode(_))), "{result:?}");
    assert!(input.capacity() < 1024 * 1024, "nothing was reserved");
}

#[test]
fn a_message_at_the_limit_decodes_and_its_parts_count_together() {
    let mut codec = codec_with_limit(300 + 2 * FRAME_OVERHEAD);
    let mut input = BytesMut::new();
    input.extend_from_slice(&[0b0000_0001, 150]);
    input.extend_from_slice(&[7u8; 150]);
    input.extend_from_slice(&[0, 150]);
    input.extend_from_slice(&[8u8; 150]);
    let Some(Message::Message(message)) = codec.decode(&mut input).unwrap() else {
        panic!("expected a message");
    };
    assert_eq!(message.len(), 2);

    // The same limit refuses a third part.
    let mut input = BytesMut::new();
    for _ in 0..2 {
        input.extend_from_slice(&[0b0000_0001, 150]);
        input.extend_from_slice(&[7u8; 150]);
    }
    input.extend_from_slice(&[0, 1, 0]);
    let result = codec.decode(&mut input);
    assert!(matches!(result, Err(CodecError::Decode(_))), "{result:?}");
}

#[test]
fn a_flood_of_empty_frames_is_bounded() {
    let mut codec = codec_with_limit(64 * 1024);
    let mut input = BytesMut::from([1u8, 0].repeat(100_000).as_slice());
    let result = codec.decode(&mut input);
    assert!(matches!(result, Err(CodecError::Decode(_))), "{result:?}");
}

#[test]
fn without_a_limit_sizes_are_unchanged() {
    let mut codec = ZmqCodec::new();
    codec.state = DecoderState::FrameHeader;
    codec.waiting_for = 1;
    let mut input = BytesMut::from(&[0u8, 3, 1, 2, 3][..]);
    assert!(matches!(
        codec.decode(&mut input).unwrap(),
        Some(Message::Message(_))
    ));
}
