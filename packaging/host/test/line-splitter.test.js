// @ts-check
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { LineSplitter, LineTooLongError, decodeLine, encodeLine } from '../index.js';

// Raw U+2028 / U+2029 inside JSON strings (legal JSON: the fake providers send them), plus
// 2-, 3- and 4-byte UTF-8 characters, so that byte-at-a-time feeding splits every one of them.
const messages = [
  { jsonrpc: '2.0', method: 'model:stream-chunk', params: { requestId: 7, seq: 0, chunk: { content: 'a\u2028b\u2029c', done: false } } },
  { jsonrpc: '2.0', id: 7, result: { content: 'é 中文 😀 \u2028 end', model: 'm' } },
  { jsonrpc: '2.0', id: 'x', result: { text: 'line\\nnot a newline, \r carriage return escaped by JSON' } },
];
// JSON.stringify leaves U+2028/U+2029 raw: exactly the case readline would break.
const wire = Buffer.from(messages.map((m) => JSON.stringify(m)).join('\n') + '\n', 'utf8');

test('the wire bytes really contain raw U+2028/U+2029 and multi-byte characters', () => {
  assert.ok(wire.includes(Buffer.from('\u2028', 'utf8')));
  assert.ok(wire.includes(Buffer.from('\u2029', 'utf8')));
  assert.ok(wire.includes(Buffer.from('😀', 'utf8')));
  // A string splitter on Unicode line breaks would find more lines than messages.
  assert.ok(wire.toString('utf8').split(/\r?\n|\r|\u2028|\u2029/).length > messages.length + 1);
});

test('fed one byte at a time, splits on 0x0A only and decodes every line whole', () => {
  const splitter = new LineSplitter();
  /** @type {unknown[]} */
  const parsed = [];
  for (let i = 0; i < wire.length; i++) {
    for (const line of splitter.push(wire.subarray(i, i + 1))) parsed.push(JSON.parse(decodeLine(line)));
  }
  assert.deepEqual(parsed, messages);
  assert.equal(splitter.flush(), null);
});

test('any chunking gives the same lines', () => {
  for (const size of [2, 3, 5, 7, 64, wire.length]) {
    const splitter = new LineSplitter();
    /** @type {unknown[]} */
    const parsed = [];
    for (let i = 0; i < wire.length; i += size) {
      for (const line of splitter.push(wire.subarray(i, i + size))) parsed.push(JSON.parse(decodeLine(line)));
    }
    assert.deepEqual(parsed, messages, `chunk size ${size}`);
  }
});

test('several lines in one chunk, a trailing \\r is dropped, empty lines come out empty', () => {
  const splitter = new LineSplitter();
  const lines = splitter.push(Buffer.from('{"a":1}\r\n\n{"b":"\u2028"}\n{"c":'));
  assert.deepEqual(lines.map(decodeLine), ['{"a":1}', '', '{"b":"\u2028"}']);
  assert.deepEqual(splitter.push(Buffer.from('3}\n')).map(decodeLine), ['{"c":3}']);
  splitter.push(Buffer.from('partial'));
  assert.equal(splitter.flush()?.toString(), 'partial');
});

test('invalid UTF-8 is refused, not replaced', () => {
  assert.throws(() => decodeLine(Buffer.from([0x7b, 0xff, 0x7d])), TypeError);
});

test('a partial line over the limit throws LineTooLongError', () => {
  const splitter = new LineSplitter({ maxLineBytes: 8 });
  assert.throws(() => splitter.push(Buffer.from('0123456789')), LineTooLongError);
  assert.deepEqual(splitter.push(Buffer.from('ok\n')).map(decodeLine), ['ok']);
});

test('outgoing lines escape U+2028/U+2029 and end in one newline', () => {
  const line = encodeLine({ prompt: 'a\u2028b\u2029c\n' });
  assert.equal(line, '{"prompt":"a\\u2028b\\u2029c\\n"}\n');
  assert.deepEqual(JSON.parse(line), { prompt: 'a\u2028b\u2029c\n' });
});
