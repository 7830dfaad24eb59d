/**
 * Decode one line as strict UTF-8, dropping a trailing `\r`. Throws a TypeError on invalid UTF-8.
 * @param {Uint8Array} line
 * @returns {string}
 */
export function decodeLine(line: Uint8Array): string;
/**
 * Encode one outgoing message as a line. U+2028/U+2029 are escaped (valid JSON either way,
 * but a peer with a careless line reader cannot be confused by them).
 * @param {unknown} message
 * @returns {string}
 */
export function encodeLine(message: unknown): string;
export class LineTooLongError extends Error {
    /** @param {number} limit */
    constructor(limit: number);
    limit: number;
}
export class LineSplitter {
    /**
     * @param {{ maxLineBytes?: number }} [options] `maxLineBytes`: a partial line growing past
     *   this many bytes makes `push` throw a `LineTooLongError` (and drops it). Default: no limit.
     */
    constructor(options?: {
        maxLineBytes?: number;
    });
    /** @type {Buffer[]} */
    _parts: Buffer[];
    _size: number;
    _maxLineBytes: number;
    /**
     * Feed bytes; get back every line completed by them, without its 0x0A.
     * @param {Uint8Array} chunk
     * @returns {Buffer[]}
     */
    push(chunk: Uint8Array): Buffer[];
    /** Bytes of an unterminated last line (the stream ended without a newline), or null. */
    flush(): Buffer<ArrayBuffer> | null;
}
