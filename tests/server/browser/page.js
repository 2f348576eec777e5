// Runs inside headless Chromium (evaluated over the DevTools protocol) on a page of the
// server's own origin. Opens the control channel (JSON encoding), creates a loopback
// session, sends the fake microphone and camera over WebRTC with trickled candidates, and
// resolves once the server reports the audio and frames it got and the echo has arrived.
async (args) => {
  const log = [];
  const ws = new WebSocket(args.url, ["tidegate.v1.json", "tidegate.bearer." + args.token]);
  const events = [];
  let wake = null;
  ws.onmessage = (e) => {
    if (typeof e.data !== "string") return;
    events.push(JSON.parse(e.data));
    if (wake) wake();
  };
  const next = async (type, ms = 15000) => {
    const deadline = Date.now() + ms;
    for (;;) {
      const i = events.findIndex((m) => m.type === type || m.type === "error");
      if (i >= 0) {
        const m = events.splice(i, 1)[0];
        if (m.type === "error") throw new Error("server error: " + JSON.stringify(m));
        return m;
      }
      if (Date.now() > deadline) throw new Error("timed out waiting for " + type);
      await new Promise((r) => { wake = r; setTimeout(r, 100); });
    }
  };
  await new Promise((ok, fail) => { ws.onopen = ok; ws.onerror = () => fail(new Error("ws failed")); });
  const send = (m) => ws.send(JSON.stringify(m));
  send({ type: "session.create", id: "s1", config: { mode: "loopback" } });
  const created = await next("session.created");
  log.push("session " + created.session_id);

  const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 320, height: 240 } });
  const pc = new RTCPeerConnection({
    iceServers: created.ice_servers,
    iceTransportPolicy: args.ice_transport_policy || "all",
  });
  for (const t of stream.getTracks()) pc.addTrack(t, stream);
  let remoteAudio = null;
  const player = new Audio();
  pc.ontrack = (e) => {
    if (e.track.kind !== "audio") return;
    remoteAudio = e.track;
    // Chromium decodes remote audio only for a sink: play it (autoplay is allowed by flag).
    player.srcObject = new MediaStream([e.track]);
    player.play().catch((err) => log.push("play: " + err));
  };
  const local = [];
  pc.onicecandidate = (e) => {
    const c = e.candidate;
    if (c) {
      local.push(c.candidate);
      send({ type: "rtc.candidate", candidate: c.candidate, sdp_mid: c.sdpMid, sdp_mline_index: c.sdpMLineIndex });
    } else {
      send({ type: "rtc.candidate", candidate: "" });
    }
  };
  await pc.setLocalDescription(await pc.createOffer());
  // Trickle: the offer goes before gathering has finished.
  send({ type: "rtc.offer", id: "o1", sdp: pc.localDescription.sdp });
  const answer = await next("rtc.answer");
  await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
  const remote = [];
  for (;;) {
    const c = await next("rtc.candidate");
    if (!c.candidate) break;
    remote.push(c.candidate);
    await pc.addIceCandidate({ candidate: c.candidate, sdpMid: c.sdp_mid, sdpMLineIndex: c.sdp_mline_index });
  }
  const t0 = Date.now();
  while (pc.connectionState !== "connected") {
    if (pc.connectionState === "failed" || Date.now() - t0 > 15000) throw new Error("pc " + pc.connectionState);
    await new Promise((r) => setTimeout(r, 50));
  }
  const connectMs = Date.now() - t0;

  // What the server saw (its metrics events) and what came back (the page's own stats).
  let lanes = null;
  let inbound = null;
  const deadline = Date.now() + 30000;
  for (;;) {
    const m = await next("metrics");
    lanes = m.stats.lanes;
    const report = await pc.getStats();
    report.forEach((s) => { if (s.type === "inbound-rtp" && s.kind === "audio") inbound = s; });
    const echoed = inbound && inbound.packetsReceived > 50 && inbound.totalAudioEnergy > 0;
    if (lanes.rtc.audio_chunks > 100 && lanes.rtc.frames > 10 && echoed) break;
    if (Date.now() > deadline) break;
  }
  // The candidate pair the media took (its local side is "relay" when forced through TURN).
  let pair = null;
  const stats = await pc.getStats();
  stats.forEach((s) => {
    if (s.type !== "transport" || !s.selectedCandidatePairId) return;
    const p = stats.get(s.selectedCandidatePairId);
    const side = (id) => {
      const c = stats.get(id);
      return c && { candidateType: c.candidateType, protocol: c.protocol, relayProtocol: c.relayProtocol, address: c.address, port: c.port };
    };
    pair = { local: side(p.localCandidateId), remote: side(p.remoteCandidateId) };
  });
  const result = {
    log, connectMs, local, remote, pair,
    rtc: lanes.rtc, media: lanes.media,
    inbound: inbound && {
      packetsReceived: inbound.packetsReceived, packetsLost: inbound.packetsLost,
      totalAudioEnergy: inbound.totalAudioEnergy, totalSamplesReceived: inbound.totalSamplesReceived,
      jitterBufferDelay: inbound.jitterBufferDelay, jitterBufferEmittedCount: inbound.jitterBufferEmittedCount,
    },
    remoteTrack: remoteAudio && remoteAudio.kind,
  };
  pc.close();
  ws.close();
  return result;
}
