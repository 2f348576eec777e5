// CBOR (RFC 8949), the part the tidegate protocol uses: unsigned and negative integers, byte
// and text strings, arrays, maps with text keys, false/true/null/undefined and floats.
//
// Decoding accepts every float width and indefinite-length items, and refuses what the
// protocol refuses (docs/protocol.md, "Encodings"): semantic tags, duplicate map keys,
// non-text map keys, trailing bytes, nesting deeper than `maxDepth`. Integers beyond 2^53
// are refused too (no protocol field holds one).
//
// Encoding writes integers in their shortest form and every other number as a 64-bit float,
// as the server does. A number that must travel as a float although it is integral (a media
// time of 20 ms) is wrapped in `Float64`; protocol.ts does that from the message schema.

export class CborError extends Error {
  override name = "CborError";
}

/** A number encoded as a 64-bit float even when integral (decoded so with `markFloats`). */
export class Float64 {
  constructor(readonly value: number) {}
}

export type CborValue =
  | number
  | Float64
  | string
  | boolean
  | null
  | undefined
  | Uint8Array
  | CborValue[]
  | { [key: string]: CborValue };

export interface DecodeOptions {
  /** Deepest nesting accepted (the server's default limit is 8). */
  maxDepth?: number;
  /** Decode floats as `Float64` (for byte-exact re-encoding), not as plain numbers. */
  markFloats?: boolean;
}

const BREAK = 0xff;
const TWO_32 = 2 ** 32;
const utf8 = new TextEncoder();
const utf8Strict = new TextDecoder("utf-8", { fatal: true });

// -- encoding ---------------------------------------------------------------------------------

class Writer {
  private buf = new Uint8Array(256);
  private view = new DataView(this.buf.buffer);
  length = 0;

  private reserve(n: number): void {
    if (this.length + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.length + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.length));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }

  byte(b: number): void {
    this.reserve(1);
    this.buf[this.length++] = b;
  }

  bytes(b: Uint8Array): void {
    this.reserve(b.length);
    this.buf.set(b, this.length);
    this.length += b.length;
  }

  head(major: number, n: number): void {
    const m = major << 5;
    if (n < 24) this.byte(m | n);
    else if (n < 0x100) {
      this.byte(m | 24);
      this.byte(n);
    } else if (n < 0x10000) {
      this.reserve(3);
      this.buf[this.length] = m | 25;
      this.view.setUint16(this.length + 1, n);
      this.length += 3;
    } else if (n < TWO_32) {
      this.reserve(5);
      this.buf[this.length] = m | 26;
      this.view.setUint32(this.length + 1, n);
      this.length += 5;
    } else {
      this.reserve(9);
      this.buf[this.length] = m | 27;
      this.view.setUint32(this.length + 1, Math.floor(n / TWO_32));
      this.view.setUint32(this.length + 5, n % TWO_32);
      this.length += 9;
    }
  }

  float64(x: number): void {
    this.reserve(9);
    this.buf[this.length] = 0xfb;
    this.view.setFloat64(this.length + 1, x);
    this.length += 9;
  }

  result(): Uint8Array {
    return this.buf.slice(0, this.length);
  }
}

function encodeInto(w: Writer, value: CborValue, depth: number): void {
  if (depth > 64) throw new CborError("value nested too deeply to encode");
  if (value === null) w.byte(0xf6);
  else if (value === undefined) w.byte(0xf7);
  else if (value === false) w.byte(0xf4);
  else if (value === true) w.byte(0xf5);
  else if (typeof value === "number") {
    if (Number.isSafeInteger(value) && !Object.is(value, -0)) {
      if (value >= 0) w.head(0, value);
      else w.head(1, -1 - value);
    } else w.float64(value);
  } else if (value instanceof Float64) w.float64(value.value);
  else if (typeof value === "string") {
    const b = utf8.encode(value);
    w.head(3, b.length);
    w.bytes(b);
  } else if (value instanceof Uint8Array) {
    w.head(2, value.length);
    w.bytes(value);
  } else if (Array.isArray(value)) {
    w.head(4, value.length);
    for (const item of value) encodeInto(w, item, depth + 1);
  } else if (typeof value === "object") {
    // Fields set to undefined are left out: an absent optional field.
    const entries = Object.entries(value).filter(([, v]) => v !== undefined);
    w.head(5, entries.length);
    for (const [k, v] of entries) {
      encodeInto(w, k, depth + 1);
      encodeInto(w, v, depth + 1);
    }
  } else {
    throw new CborError(`cannot encode a ${typeof value}`);
  }
}

export function encode(value: CborValue): Uint8Array {
  const w = new Writer();
  encodeInto(w, value, 0);
  return w.result();
}

// -- decoding ---------------------------------------------------------------------------------

function float16(bits: number): number {
  const exp = (bits >> 10) & 0x1f;
  const frac = bits & 0x3ff;
  const sign = bits & 0x8000 ? -1 : 1;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 0x1f) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

class Reader {
  private pos = 0;
  private readonly view: DataView;

  constructor(
    private readonly data: Uint8Array,
    private readonly maxDepth: number,
    private readonly markFloats: boolean,
  ) {
    this.view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  }

  private need(n: number): void {
    if (this.pos + n > this.data.length) {
      throw new CborError(`truncated: item needs ${n} more bytes at offset ${this.pos}`);
    }
  }

  private u8(): number {
    this.need(1);
    return this.data[this.pos++]!;
  }

  /** The argument of a head (-1 for indefinite length). */
  private argument(info: number): number {
    if (info < 24) return info;
    let n: number;
    if (info === 24) n = this.u8();
    else if (info === 25) {
      this.need(2);
      n = this.view.getUint16(this.pos);
      this.pos += 2;
    } else if (info === 26) {
      this.need(4);
      n = this.view.getUint32(this.pos);
      this.pos += 4;
    } else if (info === 27) {
      this.need(8);
      n = this.view.getUint32(this.pos) * TWO_32 + this.view.getUint32(this.pos + 4);
      this.pos += 8;
      if (!Number.isSafeInteger(n)) throw new CborError("integer beyond 2^53");
    } else if (info === 31) return -1;
    else throw new CborError(`reserved additional information ${info}`);
    return n;
  }

  private take(n: number): Uint8Array {
    this.need(n);
    const out = this.data.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  /** Byte or text string content, joining the chunks of an indefinite-length one. */
  private chunks(major: number, n: number): Uint8Array {
    if (n >= 0) return this.take(n);
    const parts: Uint8Array[] = [];
    for (;;) {
      const b = this.u8();
      if (b === BREAK) break;
      if (b >> 5 !== major) throw new CborError("indefinite string chunk of another type");
      const len = this.argument(b & 0x1f);
      if (len < 0) throw new CborError("nested indefinite string chunk");
      parts.push(this.take(len));
    }
    const out = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }

  private atBreak(): boolean {
    this.need(1);
    if (this.data[this.pos] !== BREAK) return false;
    this.pos += 1;
    return true;
  }

  private float(x: number): number | Float64 {
    return this.markFloats ? new Float64(x) : x;
  }

  item(depth: number): CborValue {
    const b = this.u8();
    const major = b >> 5;
    const info = b & 0x1f;
    if (major === 7) {
      if (info === 20) return false;
      if (info === 21) return true;
      if (info === 22) return null;
      if (info === 23) return undefined;
      if (info === 25) {
        this.need(2);
        const x = float16(this.view.getUint16(this.pos));
        this.pos += 2;
        return this.float(x);
      }
      if (info === 26) {
        this.need(4);
        const x = this.view.getFloat32(this.pos);
        this.pos += 4;
        return this.float(x);
      }
      if (info === 27) {
        this.need(8);
        const x = this.view.getFloat64(this.pos);
        this.pos += 8;
        return this.float(x);
      }
      if (info === 31) throw new CborError("unexpected break");
      throw new CborError(`simple value ${info} is not used by the protocol`);
    }
    if (major === 6) throw new CborError("semantic tags are not used by the protocol");
    const n = this.argument(info);
    if (n < 0 && major < 2) throw new CborError("indefinite length on an integer");
    switch (major) {
      case 0:
        return n;
      case 1:
        return -1 - n;
      case 2:
        return this.chunks(2, n).slice();
      case 3:
        try {
          return utf8Strict.decode(this.chunks(3, n));
        } catch {
          throw new CborError("text string is not valid UTF-8");
        }
    }
    if (depth >= this.maxDepth) throw new CborError(`nested deeper than ${this.maxDepth} levels`);
    if (major === 4) {
      const out: CborValue[] = [];
      if (n >= 0) for (let i = 0; i < n; i++) out.push(this.item(depth + 1));
      else while (!this.atBreak()) out.push(this.item(depth + 1));
      return out;
    }
    const out: { [key: string]: CborValue } = {};
    for (let i = 0; n < 0 ? !this.atBreak() : i < n; i++) {
      const key = this.item(depth + 1);
      if (typeof key !== "string") throw new CborError("map key is not a text string");
      if (Object.hasOwn(out, key)) throw new CborError(`duplicate map key ${JSON.stringify(key)}`);
      // defineProperty: a "__proto__" key is data, never the object's prototype.
      Object.defineProperty(out, key, {
        value: this.item(depth + 1),
        enumerable: true,
        writable: true,
        configurable: true,
      });
    }
    return out;
  }

  done(): void {
    if (this.pos !== this.data.length) {
      throw new CborError(`${this.data.length - this.pos} bytes after the item`);
    }
  }
}

export function decode(data: Uint8Array, options: DecodeOptions = {}): CborValue {
  const r = new Reader(data, options.maxDepth ?? 64, options.markFloats ?? false);
  const value = r.item(0);
  r.done();
  return value;
}
