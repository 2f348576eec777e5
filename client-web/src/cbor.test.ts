// The codec and the protocol module against the wire vectors that tidegate/protocol is tested
// on (tests/protocol/vectors/wire.json): the same bytes, both ways.

import { describe, expect, it } from "vitest";

import wire from "../../tests/protocol/vectors/wire.json";
import { CborError, decode, encode, Float64 } from "./cbor";
import {
  type ClientMessage,
  decodeMessage,
  encodeMessage,
  ProtocolError,
  SERVER_TYPES,
} from "./protocol";

interface Vector {
  type: string;
  direction: "client" | "server";
  value: unknown;
  cbor: string;
}

const vectors = (wire as { vectors: Vector[] }).vectors;

const hex = (b: Uint8Array): string => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
const unhex = (s: string): Uint8Array => new Uint8Array(s.match(/../g)!.map((h) => parseInt(h, 16)));

/** The vector's value with {"$bytes": hex} as a byte string. */
function expected(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(expected);
  if (v && typeof v === "object") {
    const o = v as Record<string, unknown>;
    if (typeof o.$bytes === "string" && Object.keys(o).length === 1) return unhex(o.$bytes);
    return Object.fromEntries(Object.entries(o).map(([k, x]) => [k, expected(x)]));
  }
  return v;
}

describe("wire vectors", () => {
  it("covers both directions", () => {
    expect(vectors.filter((v) => v.direction === "client").length).toBeGreaterThan(5);
    expect(vectors.filter((v) => v.direction === "server").length).toBeGreaterThan(10);
  });

  it.each(vectors.map((v, i) => [`${i} ${v.direction} ${v.type}`, v] as const))(
    "%s: decodes, and re-encodes to the same bytes",
    (_, v) => {
      const bytes = unhex(v.cbor);
      expect(decode(bytes)).toEqual(expected(v.value));
      expect(hex(encode(decode(bytes, { markFloats: true })))).toBe(v.cbor);
    },
  );

  it.each(vectors.filter((v) => v.direction === "client").map((v) => [v.type, v] as const))(
    "%s: encodeMessage writes the vector's bytes from its value",
    (_, v) => {
      expect(hex(encodeMessage(expected(v.value) as ClientMessage))).toBe(v.cbor);
    },
  );

  it.each(vectors.filter((v) => v.direction === "server").map((v) => [v.type, v] as const))(
    "%s: decodeMessage accepts it (types the client does not read pass as unknown)",
    (type, v) => {
      const want = SERVER_TYPES.has(type) ? expected(v.value) : { type, unknown: true };
      expect(decodeMessage(unhex(v.cbor))).toEqual(want);
    },
  );
});

describe("cbor", () => {
  it("writes integers in their shortest form and other numbers as 64-bit floats", () => {
    expect(hex(encode(0))).toBe("00");
    expect(hex(encode(23))).toBe("17");
    expect(hex(encode(24))).toBe("1818");
    expect(hex(encode(65536))).toBe("1a00010000");
    expect(hex(encode(2 ** 32))).toBe("1b0000000100000000");
    expect(hex(encode(-1))).toBe("20");
    expect(hex(encode(-500))).toBe("3901f3");
    expect(hex(encode(0.5))).toBe("fb3fe0000000000000");
    expect(hex(encode(new Float64(1)))).toBe("fb3ff0000000000000");
    expect(hex(encode(-0))).toBe("fb8000000000000000");
  });

  it("reads every float width and indefinite-length items", () => {
    expect(decode(unhex("f93c00"))).toBe(1); // half
    expect(decode(unhex("f97bff"))).toBe(65504);
    expect(decode(unhex("fa47c35000"))).toBe(100000); // single
    expect(decode(unhex("5f42010243030405ff"))).toEqual(new Uint8Array([1, 2, 3, 4, 5]));
    expect(decode(unhex("7f657374726561646d696e67ff"))).toBe("streaming");
    expect(decode(unhex("9f018202039f0405ffff"))).toEqual([1, [2, 3], [4, 5]]);
    expect(decode(unhex("bf61610161629f0203ffff"))).toEqual({ a: 1, b: [2, 3] });
  });

  it("keeps a __proto__ key as data", () => {
    const m = decode(encode({ ["__proto__"]: 1 } as never)) as Record<string, unknown>;
    expect(Object.getPrototypeOf(m)).toBe(Object.prototype);
    expect(Object.keys(m)).toEqual(Object.keys({ ["__proto__"]: 1 }));
  });

  it.each([
    ["c074323031332d30332d32315432303a30343a30305a", /semantic tags/],
    ["a2616101616102", /duplicate map key "a"/],
    ["a10101", /map key is not a text string/],
    ["0001", /1 bytes after the item/],
    ["1a0001", /truncated/],
    ["62c328", /not valid UTF-8/],
    ["1c", /reserved additional information/],
    ["f0", /simple value 16/],
    ["1bffffffffffffffff", /beyond 2\^53/],
    ["ff", /unexpected break/],
  ])("refuses %s", (h, message) => {
    expect(() => decode(unhex(h))).toThrow(CborError);
    expect(() => decode(unhex(h))).toThrow(message);
  });

  it("refuses nesting deeper than maxDepth", () => {
    const deep = unhex("81".repeat(9) + "00");
    expect(() => decode(deep, { maxDepth: 8 })).toThrow(/deeper than 8/);
    expect(decode(unhex("81".repeat(8) + "00"), { maxDepth: 8 })).toBeDefined();
  });
});

describe("decodeMessage", () => {
  it("names the field a malformed server message got wrong", () => {
    const bad = encode({ type: "asr.final", seq: 1, t: 1, segment_id: "g1", text: 5 } as never);
    expect(() => decodeMessage(bad)).toThrow(ProtocolError);
    expect(() => decodeMessage(bad)).toThrow("asr.final.text: expected a string");
    expect(() => decodeMessage(encode([1]))).toThrow("a message must be a map");
    expect(() => decodeMessage(unhex("a1"))).toThrow(/undecodable message: truncated/);
    const box = encode({ type: "vision.result", seq: 1, t: 1, frame_ts: 0, detections: [{ label: "face", score: 1, box: [1, 2] }] });
    expect(() => decodeMessage(box)).toThrow(/box of 4 numbers/);
  });

  it("passes unknown types through and ignores unknown fields", () => {
    expect(decodeMessage(encode({ type: "future.thing", x: 1 }))).toEqual({ type: "future.thing", unknown: true });
    const m = decodeMessage(encode({ type: "session.closed", seq: 2, t: 1, reason: "", extra: [1] }));
    expect(m.type).toBe("session.closed");
  });
});
