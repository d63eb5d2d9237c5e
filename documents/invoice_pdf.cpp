#include "documents/invoice_pdf.hpp"

#include <hpdf.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string_view>
#include <vector>

#include "billing/exact_amount.hpp"
#include "core/money.hpp"

namespace spillway::documents {
namespace {

using billing::FormatAmount;

// A4 portrait, in points.
constexpr HPDF_REAL kLeft = 50, kRight = 545, kTop = 792, kBottom = 70;
// The table's columns: the description's width from the left margin, then right edges.
constexpr HPDF_REAL kDescriptionWidth = 275, kQuantityRight = 405, kPriceRight = 470;

// UTF-8 as Windows-1252, what the PDF base fonts show under WinAnsiEncoding: Latin-1 as itself,
// the typographic marks 1252 adds, anything else '?'; control characters become spaces.
std::string Cp1252(std::string_view s) {
  std::string out;
  for (std::size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    std::uint32_t cp = 0;
    std::size_t n = 1;
    if (c < 0x80) cp = c;
    else if ((c >> 5) == 0x6 && i + 1 < s.size()) cp = ((c & 0x1Fu) << 6) | (s[i + 1] & 0x3Fu), n = 2;
    else if ((c >> 4) == 0xE && i + 2 < s.size()) cp = ((c & 0x0Fu) << 12) | ((s[i + 1] & 0x3Fu) << 6) | (s[i + 2] & 0x3Fu), n = 3;
    else if ((c >> 3) == 0x1E && i + 3 < s.size()) cp = 0x110000, n = 4;  // beyond the BMP: never in 1252
    else cp = 0xFFFD;
    i += n;
    if (cp < 0x20 || cp == 0x7F) out += ' ';
    else if (cp < 0x80 || (cp >= 0xA0 && cp <= 0xFF)) out += static_cast<char>(cp);
    else {
      switch (cp) {
        case 0x20AC: out += '\x80'; break;  // €
        case 0x2018: out += '\x91'; break;
        case 0x2019: out += '\x92'; break;
        case 0x201C: out += '\x93'; break;
        case 0x201D: out += '\x94'; break;
        case 0x2022: out += '\x95'; break;
        case 0x2013: out += '\x96'; break;
        case 0x2014: out += '\x97'; break;
        case 0x2122: out += '\x99'; break;
        default: out += '?';
      }
    }
  }
  return out;
}

std::string Day(TimeMs t) { return FormatTime(t).substr(0, 10); }
std::string Second(TimeMs t) { return FormatTime(t).substr(0, 19) + "Z"; }

std::vector<std::string> SplitLines(const std::string& s) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (start <= s.size()) {
    const auto nl = s.find('\n', start);
    std::string part = s.substr(start, nl == std::string::npos ? std::string::npos : nl - start);
    if (!part.empty()) out.push_back(part);
    if (nl == std::string::npos) break;
    start = nl + 1;
  }
  return out;
}

void OnError(HPDF_STATUS code, HPDF_STATUS detail, void* data) {
  auto* first = static_cast<std::pair<HPDF_STATUS, HPDF_STATUS>*>(data);
  if (first->first == 0) *first = {code, detail};
}

class Writer {
 public:
  explicit Writer(const billing::StoredInvoice& s) : s_(s), inv_(s.invoice), draft_(s.invoice.status != "finalized") {
    pdf_ = HPDF_New(OnError, &error_);
    if (!pdf_) throw std::runtime_error("libharu could not start a document");
    HPDF_SetCompressionMode(pdf_, HPDF_COMP_ALL);
    regular_ = HPDF_GetFont(pdf_, "Helvetica", "WinAnsiEncoding");
    bold_ = HPDF_GetFont(pdf_, "Helvetica-Bold", "WinAnsiEncoding");
    mono_ = HPDF_GetFont(pdf_, "Courier", "WinAnsiEncoding");
  }
  ~Writer() { HPDF_Free(pdf_); }
  Writer(const Writer&) = delete;
  Writer& operator=(const Writer&) = delete;

  std::string Render() {
    Info();
    NewPage();
    Header();
    Lines();
    Totals();
    CreditNotes();
    Notes();
    Footers();
    if (HPDF_SaveToStream(pdf_) != HPDF_OK || error_.first != 0) Fail("save");
    std::string out(HPDF_GetStreamSize(pdf_), '\0');
    HPDF_UINT32 size = static_cast<HPDF_UINT32>(out.size());
    const HPDF_STATUS read = HPDF_ReadFromStream(pdf_, reinterpret_cast<HPDF_BYTE*>(out.data()), &size);
    if (read != HPDF_OK && !(read == HPDF_STREAM_EOF && size == out.size())) Fail("read");
    out.resize(size);
    return out;
  }

 private:
  [[noreturn]] void Fail(const char* what) {
    throw std::runtime_error(std::string("libharu failed to ") + what + " an invoice PDF (error " +
                             std::to_string(error_.first) + ", detail " + std::to_string(error_.second) + ")");
  }

  std::string Issuer() const { return inv_.issuer.legal_name.empty() ? "Spillway" : inv_.issuer.legal_name; }
  std::string Title() const {
    return draft_ ? "Draft invoice " + inv_.period : "Invoice " + inv_.number.value_or(inv_.id);
  }

  // The document's information: its date is the invoice's finalization (a draft: its last update),
  // never the time of rendering.
  void Info() {
    HPDF_SetInfoAttr(pdf_, HPDF_INFO_TITLE, Cp1252(Title()).c_str());
    HPDF_SetInfoAttr(pdf_, HPDF_INFO_AUTHOR, Cp1252(Issuer()).c_str());
    HPDF_SetInfoAttr(pdf_, HPDF_INFO_CREATOR, "Spillway");
    const TimeMs when = inv_.finalized_at.value_or(s_.updated_at);
    const std::string t = FormatTime(when);
    HPDF_Date d{};
    d.year = std::stoi(t.substr(0, 4));
    d.month = std::stoi(t.substr(5, 2));
    d.day = std::stoi(t.substr(8, 2));
    d.hour = std::stoi(t.substr(11, 2));
    d.minutes = std::stoi(t.substr(14, 2));
    d.seconds = std::stoi(t.substr(17, 2));
    d.ind = 'Z';
    HPDF_SetInfoDateAttr(pdf_, HPDF_INFO_CREATION_DATE, d);
    HPDF_SetInfoDateAttr(pdf_, HPDF_INFO_MOD_DATE, d);
  }

  void NewPage() {
    page_ = HPDF_AddPage(pdf_);
    HPDF_Page_SetSize(page_, HPDF_PAGE_SIZE_A4, HPDF_PAGE_PORTRAIT);
    pages_.push_back(page_);
    if (draft_) {  // DRAFT across the page, light, under everything else
      HPDF_Page_SetGrayFill(page_, 0.88f);
      HPDF_Page_BeginText(page_);
      HPDF_Page_SetFontAndSize(page_, bold_, 150);
      HPDF_Page_SetTextMatrix(page_, 0.7071f, 0.7071f, -0.7071f, 0.7071f, 150, 230);
      HPDF_Page_ShowText(page_, "DRAFT");
      HPDF_Page_EndText(page_);
      HPDF_Page_SetGrayFill(page_, 0);
    }
    y_ = kTop;
  }

  HPDF_REAL Width(HPDF_Font font, HPDF_REAL size, const std::string& text) const {
    const HPDF_TextWidth w = HPDF_Font_TextWidth(font, reinterpret_cast<const HPDF_BYTE*>(text.c_str()),
                                                 static_cast<HPDF_UINT>(text.size()));
    return static_cast<HPDF_REAL>(w.width) * size / 1000;
  }
  // `text` (UTF-8) at (x, y), left-aligned, or right-aligned to x.
  void Text(HPDF_Font font, HPDF_REAL size, HPDF_REAL x, HPDF_REAL y, const std::string& text, bool right = false) {
    const std::string t = Cp1252(text);
    HPDF_Page_BeginText(page_);
    HPDF_Page_SetFontAndSize(page_, font, size);
    HPDF_Page_TextOut(page_, right ? x - Width(font, size, t) : x, y, t.c_str());
    HPDF_Page_EndText(page_);
  }
  // `text` broken into lines no wider than `width` (at spaces; a longer word at any character).
  std::vector<std::string> Wrap(HPDF_Font font, HPDF_REAL size, const std::string& text, HPDF_REAL width) const {
    const std::string t = Cp1252(text);
    std::vector<std::string> lines;
    std::string line;
    std::size_t i = 0;
    while (i < t.size()) {
      std::size_t end = t.find(' ', i);
      if (end == std::string::npos) end = t.size();
      std::string word = t.substr(i, end - i);
      i = end + 1;
      const std::string candidate = line.empty() ? word : line + " " + word;
      if (Width(font, size, candidate) <= width) {
        line = candidate;
        continue;
      }
      if (!line.empty()) lines.push_back(line);
      line.clear();
      while (Width(font, size, word) > width) {  // a word wider than the column
        std::size_t n = word.size();
        while (n > 1 && Width(font, size, word.substr(0, n)) > width) --n;
        lines.push_back(word.substr(0, n));
        word.erase(0, n);
      }
      line = word;
    }
    if (!line.empty() || lines.empty()) lines.push_back(line);
    return lines;
  }
  void Rule(HPDF_REAL y, HPDF_REAL from = kLeft) {
    HPDF_Page_SetLineWidth(page_, 0.5f);
    HPDF_Page_MoveTo(page_, from, y);
    HPDF_Page_LineTo(page_, kRight, y);
    HPDF_Page_Stroke(page_);
  }
  // Room for `height` more on this page, or a new one.
  void Need(HPDF_REAL height, bool table = false) {
    if (y_ - height >= kBottom) return;
    NewPage();
    Text(bold_, 10, kLeft, y_, Title() + " (continued)");
    y_ -= 22;
    if (table) TableHeader();
  }
  // Already in Windows-1252 (from Wrap): drawn as they are.
  void Raw(HPDF_Font font, HPDF_REAL size, HPDF_REAL x, HPDF_REAL y, const std::string& t) {
    HPDF_Page_BeginText(page_);
    HPDF_Page_SetFontAndSize(page_, font, size);
    HPDF_Page_TextOut(page_, x, y, t.c_str());
    HPDF_Page_EndText(page_);
  }

  void Header() {
    // The issuer, top left.
    HPDF_REAL left = y_;
    Text(bold_, 14, kLeft, left, Issuer());
    left -= 16;
    std::vector<std::string> issuer = SplitLines(inv_.issuer.address);
    if (!inv_.issuer.tax_id.empty()) issuer.push_back("Tax ID " + inv_.issuer.tax_id);
    if (!inv_.issuer.email.empty()) issuer.push_back(inv_.issuer.email);
    for (const auto& l : issuer) {
      Text(regular_, 9, kLeft, left, l);
      left -= 11;
    }
    // What it is, top right.
    HPDF_REAL right = y_;
    Text(bold_, 20, kRight, right - 4, draft_ ? "DRAFT INVOICE" : "INVOICE", true);
    right -= 24;
    const std::vector<std::pair<std::string, std::string>> facts = {
        {"Number", inv_.number.value_or("assigned when the month closes")},
        {"Period", inv_.period},
        {draft_ ? "Updated" : "Date", Day(inv_.finalized_at.value_or(s_.updated_at))},
        {"Invoice ID", inv_.id},
        {"Currency", inv_.currency}};
    for (const auto& [k, v] : facts) {
      Text(regular_, 9, kRight - 230, right, k);
      Text(bold_, 9, kRight, right, v, true);
      right -= 11;
    }
    y_ = std::min(left, right) - 16;
    // The buyer.
    Text(bold_, 10, kLeft, y_, "Bill to");
    y_ -= 13;
    std::vector<std::string> buyer;
    buyer.push_back(inv_.buyer.legal_name.empty() ? "Account " + inv_.tenant_id : inv_.buyer.legal_name);
    for (const auto& l : SplitLines(inv_.buyer.address)) buyer.push_back(l);
    if (!inv_.buyer.tax_id.empty()) buyer.push_back("Tax ID " + inv_.buyer.tax_id);
    if (!inv_.buyer.email.empty()) buyer.push_back(inv_.buyer.email);
    if (!inv_.buyer.legal_name.empty()) buyer.push_back("Account " + inv_.tenant_id);
    for (const auto& l : buyer) {
      Text(regular_, 9, kLeft, y_, l);
      y_ -= 11;
    }
    y_ -= 14;
  }

  void TableHeader() {
    Text(bold_, 9, kLeft, y_, "Description");
    Text(bold_, 9, kQuantityRight, y_, "Quantity", true);
    Text(bold_, 9, kPriceRight, y_, "Unit price", true);
    Text(bold_, 9, kRight, y_, "Amount", true);
    Rule(y_ - 4);
    y_ -= 16;
  }

  void Lines() {
    TableHeader();
    for (const auto& l : inv_.lines) {
      if (l.kind == "tax") continue;
      const auto desc = Wrap(regular_, 9, l.description, kDescriptionWidth);
      Need(11 * static_cast<HPDF_REAL>(desc.size()) + 4, true);
      const std::string unit = l.unit == "gpu_hour" ? "GPU-h" : l.unit == "gb_month" ? "GB-mo" : l.unit;
      Text(regular_, 9, kQuantityRight, y_, l.quantity + " " + unit, true);
      if (l.unit_price_micros) Text(regular_, 9, kPriceRight, y_, FormatMicros(*l.unit_price_micros), true);
      Text(regular_, 9, kRight, y_, FormatAmount(l.amount_cents), true);
      for (const auto& d : desc) {
        Raw(regular_, 9, kLeft, y_, d);
        y_ -= 11;
      }
      y_ -= 4;
    }
  }

  void Total(const std::string& label, const std::string& amount, bool strong = false) {
    Need(14);
    Text(strong ? bold_ : regular_, strong ? 11 : 9, kPriceRight, y_, label, true);
    Text(strong ? bold_ : regular_, strong ? 11 : 9, kRight, y_, amount, true);
    y_ -= strong ? 16 : 12;
  }

  void Totals() {
    Need(60);
    Rule(y_ + 6, kPriceRight - 120);
    y_ -= 6;
    Total("Subtotal", FormatAmount(inv_.subtotal_cents));
    Total("Tax " + billing::FormatRate(inv_.tax_rate_bp) + " %", FormatAmount(inv_.tax_cents));
    Total("Total " + inv_.currency, FormatAmount(inv_.total_cents), true);
  }

  void CreditNotes() {
    if (s_.credit_notes.empty()) return;
    Need(40);
    y_ -= 8;
    Text(bold_, 10, kLeft, y_, "Credit notes");
    y_ -= 14;
    for (const auto& n : s_.credit_notes) {
      const auto reason = Wrap(regular_, 9, n.number + "  " + Day(n.created_at) + "  " + n.reason, kDescriptionWidth + 100);
      Need(11 * static_cast<HPDF_REAL>(reason.size()) + 2);
      Text(regular_, 9, kRight, y_, FormatAmount(-n.total_cents), true);
      for (const auto& r : reason) {
        Raw(regular_, 9, kLeft, y_, r);
        y_ -= 11;
      }
      y_ -= 2;
    }
    y_ -= 4;
    Total("Credited", FormatAmount(-s_.credited_cents()));
    Total("Balance due " + inv_.currency, FormatAmount(inv_.total_cents - s_.credited_cents()), true);
  }

  void Notes() {
    std::vector<std::string> notes;
    notes.push_back("Usage complete through " +
                    (inv_.usage_complete_through ? Second(*inv_.usage_complete_through) : std::string("(not yet known)")) +
                    (inv_.coverage ? "; metering coverage " + *inv_.coverage + " (metered / held GPU time)" : ""));
    if (inv_.closed_incomplete) {
      std::string hosts;
      for (const auto& h : inv_.hosts_behind) hosts += (hosts.empty() ? "" : ", ") + h;
      notes.push_back("The month closed before every host reported past its end; hosts behind: " + hosts +
                      ". Their usage arriving later is billed as late usage on a later invoice.");
    }
    if (draft_)
      notes.push_back("A draft: its figures grow with usage until the month closes; it is not a demand for payment.");
    Need(30);
    y_ -= 10;
    for (const auto& n : notes)
      for (const auto& l : Wrap(regular_, 8, n, kRight - kLeft)) {
        Need(10);
        Raw(regular_, 8, kLeft, y_, l);
        y_ -= 10;
      }
    if (!draft_) {
      Need(24);
      y_ -= 4;
      Text(regular_, 8, kLeft, y_, "SHA-256 of the canonical invoice (GET /v1/invoices/" + inv_.id + "):");
      y_ -= 10;
      Text(mono_, 7.5f, kLeft, y_, s_.sha256);
      y_ -= 10;
    }
  }

  void Footers() {
    const std::string who = Issuer() + "  |  " + (draft_ ? "draft " + inv_.period : inv_.number.value_or(inv_.id));
    for (std::size_t i = 0; i < pages_.size(); ++i) {
      page_ = pages_[i];
      Text(regular_, 8, kLeft, 40, who);
      Text(regular_, 8, kRight, 40, "page " + std::to_string(i + 1) + " of " + std::to_string(pages_.size()), true);
    }
  }

  const billing::StoredInvoice& s_;
  const billing::Invoice& inv_;
  const bool draft_;
  std::pair<HPDF_STATUS, HPDF_STATUS> error_{0, 0};
  HPDF_Doc pdf_ = nullptr;
  HPDF_Font regular_ = nullptr, bold_ = nullptr, mono_ = nullptr;
  HPDF_Page page_ = nullptr;
  std::vector<HPDF_Page> pages_;
  HPDF_REAL y_ = kTop;
};

}  // namespace

std::string InvoicePdf(const billing::StoredInvoice& invoice) { return Writer(invoice).Render(); }

}  // namespace spillway::documents
