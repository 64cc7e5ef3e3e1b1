// The second-opinion export: the reader CSV that `avn readers` reads. Its one definition is
// avn/readers_format.py (columns reader,case_id,side,stage,seconds,assisted); tests/test_web.py
// parses what this writes with avn.readers_format.read_reader.
//
// Per femoral head two rows: the first read (assisted=no, seconds = time from the radiograph's
// display to the first read) and the final read after the system's result was revealed
// (assisted=yes, seconds = total time on the radiograph). A head the reader marked "not
// assessable" in a read has no row for that read.

export const READER_COLUMNS = ["reader", "case_id", "side", "stage", "seconds", "assisted"];

// RFC 4180 quoting, as Python's csv module writes and reads it.
function field(value) {
  const text = String(value ?? "");
  return /[",\r\n]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
}

function line(values) {
  return `${values.map(field).join(",")}\n`;
}

function seconds(value) {
  return value === null || value === undefined ? "" : value.toFixed(1);
}

// reads: [{caseId, heads: [{side, first, final}], firstSeconds, totalSeconds}]
export function readerCsv(reader, reads) {
  let text = line(READER_COLUMNS);
  for (const read of reads) {
    for (const head of read.heads) {
      if (head.first) text += line([reader, read.caseId, head.side, head.first, seconds(read.firstSeconds), "no"]);
    }
    for (const head of read.heads) {
      if (head.final) text += line([reader, read.caseId, head.side, head.final, seconds(read.totalSeconds), "yes"]);
    }
  }
  return text;
}
