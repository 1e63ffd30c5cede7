"""Qt building blocks whose text always fits a narrow dock, at any font size (issue 15).

Plain Qt cuts text in three places a dock widget meets: superqt's collapsible caps an open
section at the height it had when it opened (word-wrapped text that grows later, or a dock
narrower than the section's size hint, is clipped top and bottom); a combo box clips a long
choice without an ellipsis; a check box never wraps its text, so a long one widens the whole
dock beyond the screen. :class:`Section`, :class:`Combo` and :class:`WrapCheckBox` are the same
widgets without those faults.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import QEvent, QRect, QSize, Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QSizePolicy,
    QStyle,
    QStyleOptionComboBox,
    QStylePainter,
    QToolTip,
    QWidget,
)
from superqt import QCollapsible

#: Qt's "no maximum" for a widget size (QWIDGETSIZE_MAX).
UNLIMITED = 16_777_215


class Section(QCollapsible):
    """A collapsible section as tall as its content needs at its width, however that content changes.

    superqt's :class:`QCollapsible` sets the open content's maximum height to its size hint when it
    opens and whenever the content is resized, aligns its layout to the top and has a vertical size
    policy of "Maximum", which all size it by its size hint: they ignore word wrapping at the
    actual width. This one lifts the cap and grows to the height its content needs. It opens at once (no animation: a repaint less on a
    busy CPU).
    """

    def __init__(self, title: str = "", parent: QWidget | None = None) -> None:
        super().__init__(title, parent)
        self.setDuration(0)
        self.layout().setContentsMargins(0, 2, 0, 2)  # nested sections must not eat a narrow dock's width
        # superqt aligns its layout to the top, which sizes it by its size hint and not by the height
        # its word-wrapped text needs at the actual width: the content was squeezed by up to a few lines
        self.layout().setAlignment(Qt.AlignmentFlag(0))
        # and its vertical policy "Maximum" stops it at its size hint too: grow to what the text needs
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Preferred)
        self.toggled.connect(self._uncap)

    def eventFilter(self, a0: Any, a1: Any) -> bool:
        # superqt's filter caps the height again whenever the content is resized, which shrinks it at
        # once (and each new layout pass is followed by a new cap); an uncapped section needs nothing
        return False

    def _uncap(self, *_: Any) -> None:
        if self.isExpanded() and self.content().maximumHeight() != UNLIMITED:
            self.content().setMaximumHeight(UNLIMITED)


class Combo(QComboBox):
    """A combo box that may be narrower than its choices: the current one is shown elided (…) and in
    full as the tooltip, and the list opens as wide as its longest entry.

    ``whole``: never elide; the combo is at least as wide as its longest choice, so that a form row
    too narrow for label and combo side by side puts the combo under its label (for a few fixed
    choices, such as the data type; not for names of layers or models, which can be of any length).
    """

    def __init__(self, parent: QWidget | None = None, whole: bool = False) -> None:
        super().__init__(parent)
        self.whole = whole
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(5)  # the dock may be narrow: the text is elided, in full on hover

    def minimumSizeHint(self) -> QSize:
        hint = super().minimumSizeHint()
        if self.whole and self.count():
            widest = max(self.fontMetrics().horizontalAdvance(self.itemText(i)) for i in range(self.count()))
            hint.setWidth(max(hint.width(), widest + self._chrome()))
        return hint

    def sizeHint(self) -> QSize:
        hint = super().sizeHint()
        hint.setWidth(max(hint.width(), self.minimumSizeHint().width()))
        return hint

    def _chrome(self) -> int:
        """The width of everything but the text: frame, padding, arrow."""
        opt = QStyleOptionComboBox()
        self.initStyleOption(opt)
        opt.rect = QRect(0, 0, 1000, max(20, self.height()))
        field = self.style().subControlRect(QStyle.ComplexControl.CC_ComboBox, opt,
                                            QStyle.SubControl.SC_ComboBoxEditField, self)
        return 1000 - field.width() + 4

    def shown_text(self) -> str:
        """The current text (or the placeholder) as painted: elided to the width of the text field."""
        text = self.currentText() if self.currentIndex() >= 0 else self.placeholderText()
        return self.fontMetrics().elidedText(text, Qt.TextElideMode.ElideRight, self.text_width())

    def text_width(self) -> int:
        """The width of the field the current text is painted in."""
        opt = QStyleOptionComboBox()
        self.initStyleOption(opt)
        rect = self.style().subControlRect(QStyle.ComplexControl.CC_ComboBox, opt,
                                           QStyle.SubControl.SC_ComboBoxEditField, self)
        return max(0, rect.width() - 4)

    def full_text_tip(self) -> str:
        """The tooltip shown on hover: the full current text when it is elided, then the own tooltip."""
        own = self.toolTip()
        if self.currentIndex() < 0 or self.shown_text() == self.currentText():
            return own
        return self.currentText() + (f"\n\n{own}" if own else "")

    def paintEvent(self, e: Any) -> None:
        painter = QStylePainter(self)
        painter.setPen(self.palette().color(self.foregroundRole()))
        opt = QStyleOptionComboBox()
        self.initStyleOption(opt)
        painter.drawComplexControl(QStyle.ComplexControl.CC_ComboBox, opt)
        if self.currentIndex() < 0 and self.placeholderText():
            opt.palette.setBrush(opt.palette.ColorRole.ButtonText, opt.palette.placeholderText())
        opt.currentText = self.shown_text()
        painter.drawControl(QStyle.ControlElement.CE_ComboBoxLabel, opt)

    def event(self, e: Any) -> bool:
        if e.type() == QEvent.Type.ToolTip:
            tip = self.full_text_tip()
            if tip:
                QToolTip.showText(e.globalPos(), tip, self)
            else:
                QToolTip.hideText()
            return True
        return super().event(e)

    def showPopup(self) -> None:
        fm = self.view().fontMetrics()
        widest = max((fm.horizontalAdvance(self.itemText(i)) for i in range(self.count())), default=0)
        screen = self.screen().availableGeometry().width() if self.screen() is not None else 1600
        self.view().setMinimumWidth(min(widest + 40, screen // 2))
        super().showPopup()


class WrapCheckBox(QWidget):
    """A check box whose text wraps at the dock's width: a box, and a word-wrapped label that toggles it.

    It answers what the widgets ask of a :class:`QCheckBox` (``isChecked``, ``setChecked``,
    ``text``, ``setText``, ``toggled``).
    """

    def __init__(self, text: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.box = QCheckBox()
        self.label = QLabel(text)
        self.label.setWordWrap(True)
        self.label.setCursor(Qt.CursorShape.PointingHandCursor)
        self.label.installEventFilter(self)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(4)
        lay.addWidget(self.box, 0, Qt.AlignmentFlag.AlignTop)
        lay.addWidget(self.label, 1)
        self.toggled = self.box.toggled

    def eventFilter(self, a0: Any, a1: Any) -> bool:
        if a0 is self.label and a1.type() == QEvent.Type.MouseButtonRelease and self.isEnabled():
            self.box.toggle()
            return True
        return super().eventFilter(a0, a1)

    def isChecked(self) -> bool:
        return self.box.isChecked()

    def setChecked(self, checked: bool) -> None:
        self.box.setChecked(checked)

    def text(self) -> str:
        return self.label.text()

    def setText(self, text: str) -> None:
        self.label.setText(text)
        self.updateGeometry()  # a text that now wraps onto another line asks its layout for the room

    def setToolTip(self, tip: str | None) -> None:
        super().setToolTip(tip)
        self.box.setToolTip(tip)
        self.label.setToolTip(tip)
