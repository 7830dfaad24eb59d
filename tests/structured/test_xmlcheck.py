"""check_xml: extraction from prose/fences, safety (billion laughs, XXE), root and XSD checks."""

from __future__ import annotations

import pytest

from sidecar.errors import InvalidParams
from sidecar.structured.xmlcheck import XmlInvalid, check_xml

XSD = """<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema">
  <xs:element name="person"><xs:complexType><xs:sequence>
    <xs:element name="name" type="xs:string"/><xs:element name="age" type="xs:integer"/>
  </xs:sequence></xs:complexType></xs:element>
</xs:schema>"""

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<lolz>&lol3;</lolz>"""

XXE = """<?xml version="1.0"?>
<!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<foo>&xxe;</foo>"""

XXE_PARAM = """<!DOCTYPE foo [<!ENTITY % ext SYSTEM "http://127.0.0.1:9/x.dtd"> %ext;]><foo/>"""


def test_extracts_from_fence_and_checks_xsd() -> None:
    text = "Here:\n```xml\n<person><name>Ada</name><age>36</age></person>\n```\nDone."
    result = check_xml(text, root_element="person", xsd=XSD)
    assert result.text == "<person><name>Ada</name><age>36</age></person>"
    assert result.root == "person"


def test_extracts_from_prose() -> None:
    result = check_xml(
        "Sure! <result><a x='1'/><b>t</b></result> Hope this helps.", root_element="result", xsd=None
    )
    assert result.text == "<result><a x='1'/><b>t</b></result>"


@pytest.mark.parametrize("doc", [BILLION_LAUGHS, XXE, XXE_PARAM, "Answer:\n" + XXE])
def test_unsafe_documents_are_rejected(doc: str) -> None:
    with pytest.raises(XmlInvalid) as info:
        check_xml(doc, root_element=None, xsd=None)
    assert "unsafe XML" in info.value.errors[0]["message"]


def test_xsd_errors_have_paths() -> None:
    with pytest.raises(XmlInvalid) as info:
        check_xml("<person><name>A</name><age>old</age></person>", root_element=None, xsd=XSD)
    assert info.value.errors[0]["path"] == "/person/age"
    assert "xs:integer" in info.value.errors[0]["message"]


def test_wrong_root_and_malformed() -> None:
    with pytest.raises(XmlInvalid, match="expected a <person>"):
        check_xml("<other/>", root_element="person", xsd=None)
    with pytest.raises(XmlInvalid, match="not well-formed"):
        check_xml("<a><b></a>", root_element=None, xsd=None)
    with pytest.raises(XmlInvalid, match="no XML element"):
        check_xml("just prose", root_element=None, xsd=None)


def test_namespaced_root_matches_local_name() -> None:
    assert check_xml('<ns:r xmlns:ns="urn:x"><ns:r/></ns:r>', root_element="r", xsd=None).root == "r"


@pytest.mark.parametrize("xsd", ["<nope", "<root/>", "not xml at all"])
def test_invalid_xsd_is_invalid_params(xsd: str) -> None:
    with pytest.raises(InvalidParams) as info:
        check_xml("<a/>", root_element=None, xsd=xsd)
    assert info.value.errors[0]["path"] == "/responseFormat/xsd"
