// @ts-check
/**
 * @model-sidecar/host: what an Electron (or any Node) main process uses to run model-sidecar.
 * See README.md and ../../docs/protocol.md.
 */
export { SidecarHost, SidecarStream, PROTOCOL_VERSION } from './src/host.js';
export * from './src/errors.js';
export { LineSplitter, LineTooLongError, decodeLine, encodeLine } from './src/line-splitter.js';
