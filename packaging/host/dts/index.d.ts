export * from "./src/errors.js";
export { SidecarHost, SidecarStream, PROTOCOL_VERSION } from "./src/host.js";
export { LineSplitter, LineTooLongError, decodeLine, encodeLine } from "./src/line-splitter.js";
